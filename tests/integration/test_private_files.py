"""What the server writes under its data folder is readable by its own user only, and the dev app listens
on loopback unless told otherwise (issue 11, door 9). Run as another local user would look: by file mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def curatore(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command with the embedded default (SQLite files under ``data_dir``), started from a shell
    whose umask lets everyone read new files, as a careless service unit would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATORE_")}
    env.update(CURATORE_DATA_DIR=str(data_dir), CURATORE_ENV="dev")
    return subprocess.run(
        ["sh", "-c", 'umask 022; exec "$0" -m backend.cli "$@"', sys.executable, *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_database_broker_and_assets_are_private(tmp_path):
    data = tmp_path / "var"
    sample = tmp_path / "note.txt"
    sample.write_text("private words\n")
    os.chmod(sample, 0o644)

    migrated = curatore(data, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    submitted = curatore(data, "submit", "extraction", "--config", f'{{"path": "{sample}"}}')
    assert submitted.returncode == 0, submitted.stderr

    assert mode(data) == 0o700
    assert mode(data / "curatore.db") == 0o600
    assert mode(data / "broker.db") == 0o600
    for extra in data.glob("*.db-*"):  # SQLite's -wal and -shm files
        assert mode(extra) & 0o077 == 0, extra
    stored = [p for p in (data / "assets").rglob("*") if p.is_file()]
    assert stored, "the submitted file was stored as an asset"
    for path in [data / "assets", *stored, *[p for p in (data / "assets").rglob("*") if p.is_dir()]]:
        assert mode(path) & 0o077 == 0, (path, oct(mode(path)))


def test_first_admin_password_file_is_private(tmp_path, backend):
    from backend.auth.bootstrap import ensure_first_admin
    from backend.auth.orgs import ensure_org

    old = os.umask(0o022)
    try:
        email, password = ensure_first_admin(ensure_org("private-files"), tmp_path)
    finally:
        os.umask(old)
    note = tmp_path / "first-admin.txt"
    assert password and note.read_text().strip() == password
    assert mode(note) == 0o600


def test_dev_app_listens_on_loopback_by_default():
    from backend.devserver import children

    for reload in (False, True):
        ui = next(c for c in children(3000, 8000, ui=True, reload=reload) if c.name == "ui")
        assert ui.argv[ui.argv.index("--backend-host") + 1] == "127.0.0.1"
    ui = next(c for c in children(3000, 8000, ui=True, host="0.0.0.0") if c.name == "ui")
    assert ui.argv[ui.argv.index("--backend-host") + 1] == "0.0.0.0"
