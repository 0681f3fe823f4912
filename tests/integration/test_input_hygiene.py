"""Input hygiene (issue 11, doors 3 and 8), on SQLite and on PostgreSQL + Redis: text that cannot be stored,
oversized and over-deep configs, loose types and invalid pipeline stages are refused by the API (4xx, a JSON
error naming the limit) and by the CLI (exit 2, one line) with nothing written; and a run stored before these
checks, holding a lone surrogate, never breaks the run list, the run page or the UI's view builders.

Each attack is sent as an attacker would: raw JSON bytes (``\\udfff`` escapes, ``NaN``, deep brackets), not
through a client library that would refuse to encode them first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from backend.api.app import PREFIX, create_api
from backend.auth import users
from backend.auth.access import Principal
from backend.db.engine import in_transaction
from backend.db.models import Organization, OutboxEvent, Run, RunLogEvent
from backend.runs import service
from tests.api_client import ApiClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


@dataclass
class Client:
    api: ApiClient
    org: Organization
    token: str
    user: Any

    def post_raw(self, body: bytes | str, path: str = "/runs") -> httpx.Response:
        data = body.encode() if isinstance(body, str) else body
        return self.api.post(PREFIX + path, content=data, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})

    def submit(self, config_text: str, run_type: str = "procedure", **fields: Any) -> httpx.Response:
        """POST /runs with the config given as JSON text, spliced in as is."""
        head = json.dumps({"run_type": run_type, "organization": self.org.slug, **fields})
        return self.post_raw(head[:-1] + ', "config": ' + config_text + "}")

    def get(self, path: str) -> httpx.Response:
        return self.api.get(PREFIX + path, headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture
def client(backend, org) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    """A member of acme with an API token, and the app (a server error is a 500 response, not an exception)."""
    user = users.create_user("member@example.com", PASSWORD)
    users.set_role(user.id, org.id, "member")
    token = users.create_token(user.id, "hygiene")[1]
    with ApiClient(create_api(), raise_app_exceptions=False) as api:
        yield Client(api, org, token, user)


def written() -> tuple[int, int, int]:
    """(runs, log events, outbox rows): a refusal must change none of them."""
    def read(s: Any) -> tuple[int, int, int]:
        return tuple(int(s.execute(select(func.count()).select_from(m)).scalar_one())  # type: ignore[return-value]
                     for m in (Run, RunLogEvent, OutboxEvent))

    return in_transaction(read)


def refused(r: httpx.Response, status: int = 422) -> str:
    """A JSON error with this status; returns its message (never a traceback)."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] and error["message"] and "Traceback" not in error["message"]
    return error["message"]


def params(value_text: str) -> str:
    """A procedure config whose params (free-form JSON) hold this JSON text."""
    return '{"procedure": "extract_missing", "params": ' + value_text + "}"


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


CONFIG_ATTACKS = {
    "lone surrogate in a value": (params('{"x": "\\udfff"}'), ["config.params.x", "lone surrogate", "U+DFFF"]),
    "lone surrogate in a key": (params('{"\\ud800": 1}'), ["in a key", "lone surrogate"]),
    "NUL in a value": (params('{"x": "a\\u0000b"}'), ["config.params.x", "NUL"]),
    "NUL in a key": (params('{"k\\u0000": 1}'), ["in a key", "NUL"]),
    "NUL deep in a list": (params('{"x": [1, [2, ["\\u0000"]]]}'), ["config.params.x.1.1.0", "NUL"]),
    "NaN": (params('{"x": NaN}'), ["config.params.x", "not a number"]),
    "Infinity": (params('{"x": [-Infinity]}'), ["config.params.x.0", "not a number"]),
    "300 KiB config": (params('{"x": "' + "y" * 300_000 + '"}'), ["config is 293.0 KiB", "the limit is 256 KiB"]),
    "depth 40": (params(nested(40)), ["nested more than 32 levels", "the limit is 32"]),
    "depth 500": (params(nested(500)), ["nested more than 32 levels", "the limit is 32"]),
}


def test_a_valid_submit_is_written(client):
    """The control for every refusal below: the same request with clean input is accepted and counted."""
    before = written()
    r = client.submit(params('{"x": "caf\\u00e9 \\ud83d\\ude00"}'), name="fine")
    assert r.status_code == 201, r.text
    assert r.json()["config"]["params"]["x"] == "café \U0001f600"
    assert all(after > was for after, was in zip(written(), before))


@pytest.mark.parametrize("attack", CONFIG_ATTACKS)
def test_api_refuses_bad_configs_and_writes_nothing(client, attack):
    config, words = CONFIG_ATTACKS[attack]
    before = written()
    message = refused(client.submit(config))
    for word in words:
        assert word in message, message
    assert written() == before


def test_api_refuses_a_10_mb_body_before_reading_it(client):
    before = written()
    message = refused(client.submit(params('{"x": "' + "y" * 10_000_000 + '"}')), 413)
    assert "1.0 MiB" in message, message
    assert written() == before


def test_api_refuses_a_body_too_deep_for_the_parser(client):
    """Deeper than Python's recursion limit: json.loads itself gives up; still a 422, never a 500."""
    before = written()
    message = refused(client.submit(params(nested(5000))))
    assert "nested too deep" in message, message
    assert written() == before


@pytest.mark.parametrize("priority", [True, "3", 2.0, -1, 5, [2]])
def test_api_priority_is_a_strict_integer(client, priority):
    before = written()
    message = refused(client.submit(params("{}"), priority=priority))
    assert "priority" in message, message
    assert written() == before


@pytest.mark.parametrize(("field", "value"), [("name", "\udfff"), ("name", "a\x00"), ("organization", "acme\x00"),
                                              ("run_type", "procedure\x00"), ("name", True), ("run_type", 7)])
def test_api_other_fields_are_storable_text(client, field, value):
    before = written()
    body = {"run_type": "procedure", "organization": client.org.slug, "config": json.loads(params("{}")), field: value}
    message = refused(client.post_raw(json.dumps(body)))
    assert field in message, message
    assert written() == before


@pytest.mark.parametrize("query", ["search=a%00b", "organization=acme%00"])
def test_api_list_filters_are_storable_text(client, query):
    """A NUL in a filter would reach PostgreSQL as a query parameter (a DataError, 500)."""
    assert "NUL" in refused(client.get(f"/runs?{query}"))


def test_the_ui_search_box_takes_any_text(backend, org):
    """The jobs page passes its search box to the listing as typed (a crafted websocket event can hold
    anything): it matches nothing rather than reaching the driver."""
    from backend.runs import listing

    service.create_run("procedure", {"procedure": "extract_missing"}, organization_id=org.id)
    for text in ("a\x00b", "\udfff", "extract\ud800"):
        assert listing.page(listing.ListQuery(organization_id=org.id, search=text)).runs == []
    assert len(listing.page(listing.ListQuery(organization_id=org.id, search="extract")).runs) == 1


def test_api_unknown_body_key_with_a_surrogate_is_refused_encodably(client):
    """The error may quote the key: it must still be encodable (it was a 500 when the message held it raw)."""
    r = client.post_raw('{"run_type": "procedure", "organization": "acme", "\\udfff": 1, "x\\u0000": 2}')
    assert refused(r).startswith("Invalid request: body")


PIPELINE_ATTACKS = {
    "invalid stage config": ({"stages": [{"run_type": "extraction", "config": {"asset_id": "not-a-uuid"}}]},
                             "config.stages.0.config.asset_id"),
    "missing stage field": ({"stages": [{"run_type": "deletion", "config": {"resource_type": "run",
                                                                           "resource_id": "x"}},
                                        {"run_type": "extraction", "config": {"force": True}}]},
                            "config.stages.1.config.asset_id"),
    "unknown stage type": ({"stages": [{"run_type": "no_such_type"}]}, "config.stages.0.run_type: unknown run type"),
    "pipeline in a pipeline": ({"stages": [{"run_type": "pipeline", "config": {"stages": [{"run_type": "upload"}]}}]},
                               "config.stages.0.run_type"),
    "surrogate in a stage": ({"stages": [{"run_type": "extraction", "config": {"asset_id": "\udfff"}}]},
                             "config.stages.0.config.asset_id"),
}


@pytest.mark.parametrize("attack", PIPELINE_ATTACKS)
def test_api_validates_each_pipeline_stage_at_submit(client, attack):
    config, where = PIPELINE_ATTACKS[attack]
    before = written()
    message = refused(client.submit(json.dumps(config), run_type="pipeline"))
    assert where in message, message
    assert written() == before


# --------------------------------------------------------------------------- the CLI


def run_cli(backend, cwd: Path, *args: str | bytes) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    env = {**os.environ, **backend.env}
    if backend.redis_url is None:
        env.pop("CURATORE_REDIS_URL", None)
    argv = [a if isinstance(a, bytes) else a.encode() for a in (sys.executable, "-m", "backend.cli", *args)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, errors="replace", timeout=100)


CLI_ATTACKS = {
    **{k: v for k, v in CONFIG_ATTACKS.items() if k != "300 KiB config"},  # one argument holds at most 128 KiB
    "depth 5000": (params(nested(5000)), ["nested more than 32 levels"]),
    "invalid stage config": (json.dumps(PIPELINE_ATTACKS["invalid stage config"][0]),
                             ["config.stages.0.config.asset_id"]),
}


@pytest.mark.parametrize("attack", CLI_ATTACKS)
def test_cli_refuses_with_one_line_and_writes_nothing(backend, org, tmp_path, attack):
    config, words = CLI_ATTACKS[attack]
    run_type = "pipeline" if "stage" in attack else "procedure"
    before = written()
    result = run_cli(backend, tmp_path, "submit", run_type, "--org", org.slug, "--config", config)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word.replace("config", "--config", 1) in lines[0] or word in lines[0], lines[0]
    assert result.stdout == ""
    assert written() == before


def test_cli_refuses_a_name_that_is_not_utf8(backend, org, tmp_path):
    """An argument of invalid UTF-8 reaches Python as a lone surrogate (surrogateescape)."""
    before = written()
    result = run_cli(backend, tmp_path, "submit", "procedure", "--org", org.slug, "--config", params("{}"),
                     "--name", b"bad \xff name")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --name: text holds a lone surrogate (U+DCFF), which is not valid Unicode and cannot be stored."]
    assert written() == before


# --------------------------------------------------------------------------- rows stored before the checks


def _bad_row(org: Organization) -> Run:
    """A run whose stored config, results, progress and log hold what the checks now refuse, written straight
    through SQLAlchemy: SQLite keeps a lone surrogate in a JSON column (as an escape, and gives it back as one;
    a text column cannot hold one) and NUL anywhere."""
    run = service.create_run("procedure", {"procedure": "extract_missing"}, organization_id=org.id)
    deep: Any = "bottom"
    for _ in range(300):  # deeper than pydantic will serialize
        deep = {"d": deep}
    bad = {"procedure": "extract_missing", "params": {"x": "\udfff", "\ud800": ["\udc00"], "deep": deep,
                                                       "big": "z" * 300_000}}

    def write(s: Any) -> None:
        s.execute(update(Run).where(Run.id == run.id).values(
            config=bad, display_name="bad \x00 name", error_message="boom \x00", results_summary={"k": "\udfff"},
            progress={"phase": "p\udfff", "current_item": "\udc80", "percent": 10.0}))
        s.add(RunLogEvent(run_id=run.id, event_type="note", message="log \x00", context={"c": "\ud800"}))

    in_transaction(write)
    return run


def _encodable(value: Any) -> None:
    """What a page pushes must encode as UTF-8 JSON (the websocket's and the response's own encoding)."""
    json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")


def test_a_stored_bad_row_does_not_break_the_api(sqlite_backend, tmp_path):
    from backend.auth.orgs import ensure_org

    org = ensure_org("acme", "Acme")
    root = users.create_user("root@example.com", PASSWORD, system_admin=True)
    token = users.create_token(root.id, "root")[1]
    run = _bad_row(org)
    headers = {"Authorization": f"Bearer {token}"}
    with ApiClient(create_api(), raise_app_exceptions=False) as api:
        for path in ("/runs", f"/runs?organization={org.slug}", "/runs?search=bad", f"/runs/{run.id}",
                     f"/runs/{run.id}/logs"):
            r = api.get(PREFIX + path, headers=headers)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        one = api.get(f"{PREFIX}/runs/{run.id}", headers=headers).json()
    assert one["display_name"] == "bad \x00 name" and one["error_message"] == "boom \x00"  # NUL encodes in JSON
    assert one["config"]["params"]["x"] == "\ufffd" and one["config"]["params"]["\ufffd"] == ["\ufffd"]
    assert one["results_summary"] == {"k": "\ufffd"} and one["progress"]["phase"] == "p\ufffd"


def test_a_stored_bad_row_does_not_break_the_ui_builders(sqlite_backend, tmp_path):
    from backend.auth.orgs import ensure_org
    from backend.runs import listing
    from curatore_ui.pages.job_detail_state import JobDetailState, _snapshot
    from curatore_ui.state.views import SHOW_JSON_CHARS, log_line, run_row

    org = ensure_org("acme", "Acme")
    run = _bad_row(org)
    page = listing.page(listing.ListQuery(organization_id=org.id))
    rows = [run_row(r, org_slug=org.slug) for r in page.runs]
    _encodable([dataclasses.asdict(r) for r in rows])
    assert any(r.phase == "p\ufffd" and r.current_item == "\ufffd" for r in rows)

    root = users.create_user("root@example.com", PASSWORD, system_admin=True)
    snap = _snapshot(str(run.id), org.slug, Principal.of(root))
    state = SimpleNamespace()
    JobDetailState._apply_snapshot(state, snap)  # what the page pushes on load
    lines = [log_line(e) for e in snap["logs"]]
    _encodable([dataclasses.asdict(line) for line in lines])
    _encodable({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else
                [dataclasses.asdict(i) for i in v] if isinstance(v, list) else v for k, v in vars(state).items()})
    assert len(state.config_json) < SHOW_JSON_CHARS + 200, len(state.config_json)
    assert "cut:" in state.config_json and "KiB in all" in state.config_json
    assert any(line.event_type == "note" and '"\\ufffd"' in line.context for line in lines)
    assert state.results == [dataclasses.replace(state.results[0], name="\ufffd")]
