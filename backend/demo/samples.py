"""Sample jobs of every type, so a first start is not an empty page (SPEC 9.1a).

They work on the bundled files under ``files/samples`` and ``files/sample-exports`` beside this module; the
connector and scrape samples use the local stand-in servers that ``curatore dev`` starts
(``CURATORE_DEMO_SERVERS_PORT``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from backend import audit
from backend.auth.orgs import system_org
from backend.config import get_settings
from backend.db.models import Run
from backend.db.states import RunOrigin
from backend.demo.servers import DEMO_CONNECTIONS, demo_urls
from backend.errors import CuratoreError
from backend.queues.dispatch import submit_run
from backend.storage.assets import store_bytes

FILES_DIR = Path(__file__).resolve().parent / "files"
SAMPLES_DIR = FILES_DIR / "samples"
EXPORTS_DIR = FILES_DIR / "sample-exports"


def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.is_file())


def _store(org_id: uuid.UUID, path: Path) -> Any:
    return store_bytes(org_id, path.name, path.read_bytes(), source="sample")


def start_samples(organization_id: uuid.UUID, created_by: str = "demo", system_admin: bool = False) -> list[Run]:
    """Start one run of every job type on sample data; returns the runs started.

    A sample that cannot start (its resource is busy from an earlier click, say) is skipped. The health check
    is a system-only type: it starts (in the system organization) only for a system admin.
    """
    runs: list[Run] = []

    def start(run_type: str, config: dict[str, Any], name: str, org_id: uuid.UUID = organization_id) -> None:
        try:
            runs.append(submit_run(run_type, config, organization_id=org_id, origin=RunOrigin.SYSTEM,
                                   created_by=created_by, display_name=name))
        except CuratoreError as exc:
            audit.record(created_by, "submit_refused", organization_id=org_id, run_type=run_type, sample=True,
                         reason=exc.message, code=exc.code)
            return
        audit.record(created_by, "submit", organization_id=org_id, run_id=runs[-1].id, run_type=run_type,
                     sample=True)

    assets = [_store(organization_id, p) for p in sample_files()]
    for asset in assets:
        start("extraction", {"asset_id": str(asset.id)}, asset.filename)
    batch = [_store(organization_id, p) for p in sample_files()]
    start("upload", {"asset_ids": [str(a.id) for a in batch]}, "Sample upload batch")
    export = _store(organization_id, EXPORTS_DIR / "salesforce-export.zip")
    start("salesforce_import", {"asset_id": str(export.id)}, "Sample Salesforce export")
    start("procedure", {"procedure": "verify_assets"}, "Verify stored files")
    # The pipeline's stages work on files of their own: a stage on a file (or a procedure) that another sample
    # is still busy with would be refused as a duplicate, and fail the pipeline.
    staged = [_store(organization_id, p) for p in sample_files()[:2]]
    start("pipeline", {"name": "sample-pipeline", "stages": [
        {"run_type": "extraction", "config": {"asset_id": str(a.id)}} for a in staged
    ]}, "Extract two files in turn")
    doomed = store_bytes(organization_id, "obsolete-draft.txt", b"An obsolete draft.\n", source="sample")
    start("deletion", {"resource_type": "asset", "resource_id": str(doomed.id)}, "Delete an obsolete draft")
    if system_admin:
        start("system_maintenance", {"handlers": ["health", "orphans"]}, "Health check", system_org().id)
    port = get_settings().demo_servers_port
    if port:
        urls = demo_urls(port)
        demo = {kind: name for kind, (name, _) in DEMO_CONNECTIONS.items()}  # `curatore dev` configures them
        start("sharepoint_sync", {"sync_config_id": "demo-drive", "drive_id": "drive-demo",
                                  "connection": demo["sharepoint"]}, "Demo SharePoint drive")
        start("sam_pull", {"search_id": "demo-search", "connection": demo["sam"]}, "SAM.gov: demo search")
        start("sam_refresh", {"search_id": "demo-refresh", "notice_ids": ["demo0001"], "connection": demo["sam"]},
              "SAM.gov: refresh demo0001")
        start("forecast_sync", {"forecast_sync_id": "demo-forecasts", "connection": demo["forecast"]},
              "Demo forecasts")
        start("scrape", {"start_url": urls["site"] + "/", "collection_id": "demo-site", "max_depth": 2},
              "Crawl the demo site")
    return runs
