"""The real ``curatore`` command, run as a subprocess against a real worker and database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.states import RunStatus
from backend.runs.queries import RunFilter, get_logs, get_run, list_runs
from tests.data import make_samples as samples

pytestmark = pytest.mark.integration


def run_cli(backend, cwd: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **backend.env}
    if backend.redis_url is None:
        env.pop("CURATORE_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], starts: str) -> str:
    """Exit status 2, nothing on stdout, and one line on stderr: ``error: ...``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]
    assert result.stdout == ""
    return lines[0]


def unfinished_runs() -> list:
    return list_runs(RunFilter(statuses=(RunStatus.PENDING, RunStatus.SUBMITTED, RunStatus.RUNNING)))


def asset_count() -> int:
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(Asset)).scalar_one())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "cwd"
    path.mkdir()
    return path


def test_submit_wait_show_and_list(backend, worker, workdir):
    memo = workdir / "memo.md"
    memo.write_text("# Memo\n\nThe quarterly numbers are in.\n")

    result = run_cli(backend, workdir, "submit", "extraction", "--config", json.dumps({"path": str(memo)}), "--wait")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    run_id = uuid.UUID(lines[0])
    assert lines[-1] == "completed"
    assert " start " in result.stderr and " complete " in result.stderr  # the followed log, on stderr

    run = get_run(run_id)
    assert RunStatus(run.status) is RunStatus.COMPLETED
    assert run.run_type == "extraction" and run.created_by == "cli"
    assert run.display_name == memo.name  # named by the file, not by a path of the machine it was sent from
    assert set(run.config) == {"asset_id", "force"}  # the path became a stored asset
    assert run.results_summary["format"] == "markdown"

    shown = run_cli(backend, workdir, "runs", "show", str(run_id), "--json")
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    assert payload["run"]["id"] == str(run_id)
    assert payload["run"]["status"] == "completed"
    events = [e["event_type"] for e in payload["logs"]]
    assert {"start", "phase", "complete"} <= set(events)
    assert events.index("start") < events.index("phase") < events.index("complete")
    assert events == [e.event_type for e in get_logs(run_id)]

    text = run_cli(backend, workdir, "runs", "show", str(run_id))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == f"{run_id}  extraction  completed"
    assert "log:" in text.stdout

    listed = run_cli(backend, workdir, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(str(run_id)))
    assert "extraction" in row and "completed" in row and "100.0%" in row

    filtered = run_cli(backend, workdir, "runs", "list", "--json", "--status", "completed", "--type", "extraction",
                       "--org", "demo")
    assert filtered.returncode == 0, filtered.stderr
    assert [r["id"] for r in json.loads(filtered.stdout)] == [str(run_id)]
    none = run_cli(backend, workdir, "runs", "list", "--json", "--status", "failed")
    assert json.loads(none.stdout) == []


def test_submit_every_sample_format(backend, worker, workdir):
    expected = {"report.pdf": "pdf", "document.docx": "docx", "page.html": "html", "people.csv": "csv",
                "notes.md": "markdown", "legacy-cp1252.txt": "text"}
    assert set(expected) == set(samples.SAMPLES)
    for path in samples.write_samples(workdir / "samples"):
        result = run_cli(backend, workdir, "submit", "extraction", "--config", json.dumps({"path": str(path)}),
                         "--wait")
        assert result.returncode == 0, (path.name, result.stderr)
        run = get_run(result.stdout.splitlines()[0])
        assert run.results_summary["format"] == expected[path.name]
        assert run.results_summary["characters"] > 0


def test_binary_named_txt_fails_with_a_clear_message(backend, worker, workdir):
    scan = workdir / "scan.txt"
    scan.write_bytes(samples.png_bytes())

    result = run_cli(backend, workdir, "submit", "extraction", "--config", json.dumps({"path": str(scan)}), "--wait")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    run_id = uuid.UUID(lines[0])
    assert lines[-1] == "failed"
    message = "scan.txt is not a text file: its content is a PNG image."
    assert result.stderr.strip().splitlines()[-1] == message

    run = get_run(run_id)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert run.error_message == message
    assert unfinished_runs() == []


def test_orgs_create_and_submit_to_it(backend, worker, workdir):
    created = run_cli(backend, workdir, "orgs", "create", "team-x", "--name", "Team X")
    assert created.returncode == 0, created.stderr
    org_id, slug, name = created.stdout.strip().split("  ")
    assert (slug, name) == ("team-x", "Team X")
    note = workdir / "n.txt"
    note.write_text("hello")
    result = run_cli(backend, workdir, "submit", "extraction", "--org", "team-x", "--config",
                     json.dumps({"path": str(note)}), "--wait")
    assert result.returncode == 0, result.stderr
    assert str(get_run(result.stdout.splitlines()[0]).organization_id) == org_id


def test_migrate_is_idempotent(backend, workdir):
    result = run_cli(backend, workdir, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database is up to date (")
    if backend.kind == "postgres":
        assert "(postgresql+psycopg://***@127.0.0.1" in result.stdout  # the user name is not printed


def _bad_submits(tmp: Path) -> list[tuple[str, list[str], str]]:
    real = tmp / "real.txt"
    real.write_text("some text")
    return [
        ("unknown type", ["submit", "extraktion", "--config", "{}"], "Unknown run type 'extraktion'. Known types: "),
        ("invalid JSON", ["submit", "extraction", "--config", "{path: x}"], "--config is not valid JSON: "),
        ("not an object", ["submit", "extraction", "--config", "[1, 2]"], "--config must be a JSON object."),
        ("missing field", ["submit", "extraction", "--config", "{}"],
         "Invalid config for extraction: config.asset_id: Field required"),
        ("wrong type", ["submit", "extraction", "--config", json.dumps({"path": str(real), "force": "maybe"})],
         "Invalid config for extraction: config.force: Input should be a valid boolean"),
        ("extra field", ["submit", "extraction", "--config", json.dumps({"path": str(real), "fast": True})],
         "Invalid config for extraction: config.fast: Extra inputs are not permitted"),
        ("missing file", ["submit", "extraction", "--config", json.dumps({"path": str(tmp / "nope.txt")})],
         f"No such file: {tmp / 'nope.txt'}"),
        ("a directory", ["submit", "extraction", "--config", json.dumps({"path": str(tmp)})],
         f"Not a regular file: {tmp}"),
        ("path not a string", ["submit", "extraction", "--config", '{"path": 5}'],
         "A path in --config must be a non-empty string, not 5."),
        ("paths not a list", ["submit", "upload", "--config", json.dumps({"paths": str(real)})],
         '"paths" in --config must be a list of file paths.'),
        ("bad org slug", ["submit", "extraction", "--org", "Bad Org", "--config", json.dumps({"path": str(real)})],
         "Invalid organization slug 'Bad Org'"),
        ("unknown run", ["runs", "show", str(uuid.UUID(int=5))], f"No run with id {uuid.UUID(int=5)}."),
        ("not a run id", ["runs", "show", "abc"], "'abc' is not a run id."),
        ("unknown org", ["runs", "list", "--org", "nobody"], "No organization 'nobody'."),
    ]


BAD_SUBMIT_IDS = [case[0] for case in _bad_submits(Path("/tmp"))]


@pytest.mark.parametrize("case", BAD_SUBMIT_IDS)
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(backend, workdir, case):
    _, argv, starts = next(c for c in _bad_submits(workdir) if c[0] == case)
    result = run_cli(backend, workdir, *argv)
    assert_one_line_error(result, starts)
    assert list_runs() == []
    assert unfinished_runs() == []
    assert asset_count() == 0  # a refused submit stores no file either


def test_usage_errors_are_clicks_exit_2(backend, workdir):
    result = run_cli(backend, workdir, "submit", "extraction", "--priority", "9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Invalid value for '--priority'" in result.stderr
    assert list_runs() == []
