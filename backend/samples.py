"""Sample jobs on the bundled sample files, so a first start is not an empty page (SPEC 9.1a)."""

from __future__ import annotations

import uuid

from backend.config import PROJECT_ROOT
from backend.db.models import Run
from backend.queues.dispatch import submit_run
from backend.runs.states import RunOrigin
from backend.storage.assets import store_bytes

SAMPLES_DIR = PROJECT_ROOT / "assets" / "samples"


def sample_files() -> list:
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.is_file())


def start_samples(organization_id: uuid.UUID, created_by: str = "demo") -> list[Run]:
    """Store the sample files and start one extraction each plus one upload batch of all of them."""
    assets = [store_bytes(organization_id, p.name, p.read_bytes(), source="sample") for p in sample_files()]
    runs = [
        submit_run("extraction", {"asset_id": str(a.id)}, organization_id=organization_id, origin=RunOrigin.SYSTEM,
                   created_by=created_by, display_name=a.filename)
        for a in assets
    ]
    batch = [store_bytes(organization_id, p.name, p.read_bytes(), source="sample") for p in sample_files()]
    runs.append(submit_run("upload", {"asset_ids": [str(a.id) for a in batch]}, organization_id=organization_id,
                           origin=RunOrigin.SYSTEM, created_by=created_by, display_name="Sample upload batch"))
    return runs

