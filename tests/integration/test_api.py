"""The ops REST API in-process against the real database of each backend, with a real
worker where runs must execute: tokens, organization scoping on every endpoint, roles, JSON errors, a run's
whole life, cancel / bulk cancel / retry / boost / force-kill and their audit entries."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from backend import schedules
from backend.api.app import PREFIX, create_api
from backend.auth import users
from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import ApiToken, Organization, User
from backend.runs import groups, service
from backend.storage.assets import store_bytes
from tests.api_client import ApiClient
from tests.conftest import reset_process_state, restore_environ
from tests.support import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


@dataclass
class Api:
    client: ApiClient
    a: Organization
    b: Organization
    tokens: dict[str, str]
    tmp: Path

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        headers.update(kw.pop("headers", {}))
        return self.client.request(method, PREFIX + path, headers=headers, **kw)

    def get(self, who: str | None, path: str, **kw: Any) -> httpx.Response:
        return self.call(who, "GET", path, **kw)

    def post(self, who: str | None, path: str, **kw: Any) -> httpx.Response:
        return self.call(who, "POST", path, **kw)

    def ok(self, who: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.call(who, method, path, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json()

    def wait_status(self, who: str, run_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.ok(who, "GET", f"/runs/{run_id}")
            return run if run["status"] in statuses else None

        return wait_for(check, timeout, interval=0.1, what=f"run {run_id} to be {'/'.join(statuses)}")  # type: ignore


def error_of(r: httpx.Response, status: int, code: str) -> str:
    """The response is a JSON error with this status and code; returns its message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture
def api(backend, org, tmp_path) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    """Organizations acme (A) and beta (B); users by role with one token each; the queue test job types
    (here and in the workers), a 1 s cancel grace and fast heartbeats."""
    env = {
        "CURATORE_JOB_MODULES": '["tests.jobs_for_queues"]',
        "PYTHONPATH": str(ROOT),
        "CURATORE_CANCEL_GRACE_SECONDS": "1",
        "CURATORE_HEARTBEAT_SECONDS": "0.3",
        "CURATORE_SWEEP_SECONDS": "0.5",
    }
    saved = {k: os.environ.get(k) for k in env}
    backend.env.update(env)
    os.environ.update(env)
    reset_process_state()
    b = ensure_org("beta", "Beta")
    people = {"a_admin": (org, "admin"), "a_member": (org, "member"), "a_viewer": (org, "viewer"),
              "b_admin": (b, "admin"), "root": (None, None)}
    tokens = {}
    for who, (where, role) in people.items():
        user = users.create_user(f"{who}@example.com", PASSWORD, system_admin=who == "root")
        if where is not None:
            users.set_role(user.id, where.id, role)
        tokens[who] = users.create_token(user.id, f"{who} token")[1]
    try:
        with ApiClient(create_api()) as client:
            yield Api(client, org, b, tokens, tmp_path)
    finally:
        restore_environ(saved)


def pending_run(org: Organization, **config: Any) -> str:
    """A queued run written straight by the engine (not dispatched: it stays pending)."""
    return str(service.create_run("q_work", {"ms": 1, **config}, organization_id=org.id).id)


def ops_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) of the ops API, as its OpenAPI description lists them."""
    return {(method.upper(), path.removeprefix(PREFIX)) for path, item in app.openapi()["paths"].items()
            if path.startswith(PREFIX) for method in item}


# --------------------------------------------------------------------------- tokens


def test_tokens_missing_malformed_unknown_revoked_expired_or_disabled_get_401(api):  # type: ignore[no-untyped-def]
    r = api.get(None, "/runs")
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Basic YTpi", "Bearer", "Bearer ", "Bearer cur_not-a-real-token", "cur_no_scheme"):
        error_of(api.client.get(PREFIX + "/runs", headers={"Authorization": header}), 401, "unauthorized")

    user = users.get_user("a_member@example.com")
    token, secret = users.create_token(user.id, "soon revoked")
    assert api.client.get(PREFIX + "/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    users.revoke_token(token.id)
    error_of(api.client.get(PREFIX + "/runs", headers={"Authorization": f"Bearer {secret}"}), 401, "unauthorized")

    _, expired = users.create_token(user.id, "expired", days=-1)
    error_of(api.client.get(PREFIX + "/runs", headers={"Authorization": f"Bearer {expired}"}), 401, "unauthorized")

    _, live = users.create_token(user.id, "live", days=30)
    assert api.client.get(PREFIX + "/runs", headers={"Authorization": f"Bearer {live}"}).status_code == 200
    in_transaction(lambda s: s.execute(update(User).where(User.id == user.id).values(disabled=True)))
    error_of(api.client.get(PREFIX + "/runs", headers={"Authorization": f"Bearer {live}"}), 401, "unauthorized")
    stored = in_transaction(lambda s: s.get(ApiToken, token.id))
    assert secret not in stored.token_hash and stored.prefix == secret[:10]


def test_every_ops_endpoint_needs_a_token_and_health_and_metrics_do_not(api):  # type: ignore[no-untyped-def]
    routes = ops_routes(api.client.app)
    assert len(routes) == 20
    run_id = pending_run(api.a)
    for method, path in sorted(routes):
        url = path.replace("{run_id}", run_id).replace("{name}", "maintenance-hourly")
        body = {"run_ids": [run_id]} if path == "/runs/bulk-cancel" else None
        error_of(api.call(None, method, url, json=body), 401, "unauthorized")
    assert api.client.get("/api/v1/health").json() == {"status": "ok"}
    assert api.client.get("/metrics").status_code == 200
    assert api.client.get("/api/v1/openapi.json").json()["info"]["title"] == "Curatore Jobs API"
    assert api.client.get("/api/v1/docs").status_code == 200


# --------------------------------------------------------------------------- organization scoping


def test_a_token_of_one_organization_sees_nothing_of_another_on_any_endpoint(api):  # type: ignore[no-untyped-def]
    a, b = api.a, api.b
    a_run = pending_run(a)
    b_run = pending_run(b)
    b_parent = service.create_run("q_work", {"ms": 1}, organization_id=b.id)
    b_group = groups.create_group(b_parent.id)
    b_child = groups.add_child(b_group.id, "q_work", {"ms": 1})
    for _ in range(3):
        pending_run(b)
    schedules.create_schedule("a-nightly", "q_work", {"ms": 1}, organization_id=a.id, interval_seconds=3600,
                              enabled=False)
    schedules.create_schedule("b-nightly", "q_work", {"ms": 1}, organization_id=b.id, interval_seconds=3600,
                              enabled=False)
    b_ids = {b_run, str(b_parent.id), str(b_child.id)}

    # Every endpoint that takes a run id or a schedule name: B's answers exactly like one that does not exist.
    per_item = {
        ("GET", "/runs/{run_id}"), ("GET", "/runs/{run_id}/logs"), ("GET", "/runs/{run_id}/children"),
        ("GET", "/runs/{run_id}/group"), ("GET", "/runs/{run_id}/audit"), ("POST", "/runs/{run_id}/cancel"),
        ("POST", "/runs/{run_id}/retry"), ("POST", "/runs/{run_id}/boost"), ("POST", "/runs/{run_id}/force-kill"),
        ("POST", "/schedules/{name}/enable"), ("POST", "/schedules/{name}/disable"),
        ("POST", "/schedules/{name}/trigger"), ("GET", "/schedules/{name}/history"),
    }
    collections = {("GET", "/runs"), ("POST", "/runs"), ("POST", "/runs/bulk-cancel"), ("GET", "/queues"),
                   ("GET", "/registry"), ("GET", "/schedules"), ("GET", "/runs/stats")}
    assert per_item | collections == ops_routes(api.client.app), "a new endpoint needs its scoping test"
    missing_run = str(uuid.uuid4())
    for method, path in sorted(per_item):
        for b_id in ([str(b_parent.id), str(b_child.id)] if "{run_id}" in path else ["b-nightly"]):
            other = missing_run if "{run_id}" in path else "no-such-task"
            code = "run_not_found" if "{run_id}" in path else "schedule_not_found"
            key = "{run_id}" if "{run_id}" in path else "{name}"
            message = error_of(api.call("a_admin", method, path.replace(key, b_id)), 404, code)
            unknown = error_of(api.call("a_admin", method, path.replace(key, other)), 404, code)
            assert message.replace(b_id, "X") == unknown.replace(other, "X"), (message, unknown)
            if method == "GET" and not path.endswith("/group"):  # ... while A's own is there
                mine = a_run if "{run_id}" in path else "a-nightly"
                assert api.call("a_admin", method, path.replace(key, mine)).status_code == 200

    # Nothing of B was changed by those calls.
    for b_id in b_ids:
        assert api.ok("root", "GET", f"/runs/{b_id}")["status"] == "pending"
    assert api.ok("root", "GET", "/runs/" + str(b_parent.id) + "/audit")["items"] == []

    # Lists contain A only; filtering on B (or on B's runs) gives 404 or nothing.
    listed = {r["id"] for r in api.ok("a_admin", "GET", "/runs", params={"limit": 200})["items"]}
    assert a_run in listed and not listed & b_ids
    assert {r["organization"] for r in api.ok("a_admin", "GET", "/runs")["items"]} == {"acme"}
    msg_b = error_of(api.get("a_admin", "/runs", params={"organization": "beta"}), 404, "not_found")
    msg_none = error_of(api.get("a_admin", "/runs", params={"organization": "gamma"}), 404, "not_found")
    assert msg_b.replace("beta", "X") == msg_none.replace("gamma", "X")
    assert api.ok("a_admin", "GET", "/runs", params={"search": b_run})["items"] == []
    assert api.ok("a_admin", "GET", "/runs", params={"parent": str(b_parent.id)})["items"] == []
    assert len(api.ok("root", "GET", "/runs", params={"parent": str(b_parent.id)})["items"]) == 1
    all_ids = {r["id"] for r in api.ok("root", "GET", "/runs", params={"limit": 200})["items"]}
    assert b_ids | {a_run} <= all_ids
    assert api.ok("b_admin", "GET", "/runs", params={"organization": "beta"})["items"]
    # Counts and cards: A's own; B's organization answers like one that does not exist.
    stats_a = api.ok("a_admin", "GET", "/runs/stats")
    assert stats_a["types"] == {"q_work": 1} and stats_a["cards"]["pending"] == 1 and stats_a["total"] == 1
    assert api.ok("root", "GET", "/runs/stats")["types"] == {"q_work": 7}
    assert api.ok("root", "GET", "/runs/stats", params={"organization": "beta"})["cards"]["pending"] == 6
    msg_b = error_of(api.get("a_admin", "/runs/stats", params={"organization": "beta"}), 404, "not_found")
    msg_none = error_of(api.get("a_admin", "/runs/stats", params={"organization": "gamma"}), 404, "not_found")
    assert msg_b.replace("beta", "X") == msg_none.replace("gamma", "X")

    # Submitting into B, bulk-cancelling B's runs: refused as not found, per run.
    body = {"run_type": "q_work", "config": {}, "organization": "beta"}
    error_of(api.post("a_admin", "/runs", json=body), 404, "not_found")
    bulk = api.ok("a_admin", "POST", "/runs/bulk-cancel", json={"run_ids": [b_run, a_run]})
    assert bulk["cancelled"] == 1 and bulk["refused"] == 1
    assert bulk["results"][0]["error"]["code"] == "run_not_found" and bulk["results"][1]["status"] == "cancelled"
    assert api.ok("root", "GET", f"/runs/{b_run}")["status"] == "pending"

    # Queue counts, schedules: A's own only; the registry is the same for everyone.
    def default_pending(who: str) -> int:
        queues = api.ok(who, "GET", "/queues")["queues"]
        return next(q["pending"] for q in queues if q["name"] == "default")

    assert default_pending("a_admin") == 0  # A's one pending run was cancelled just above
    assert default_pending("b_admin") == 6  # b_run, the parent, its child, three more
    assert default_pending("root") == 6
    stats_of_a = api.ok("a_admin", "GET", "/queues?hours=3")
    assert set(stats_of_a["history_by_queue"]) == {q["name"] for q in stats_of_a["queues"]}  # each queue on its own
    assert all(len(hours) == 3 for hours in stats_of_a["history_by_queue"].values())
    assert [s["name"] for s in api.ok("a_admin", "GET", "/schedules")["items"]] == ["a-nightly"]
    assert {s["name"] for s in api.ok("root", "GET", "/schedules")["items"]} >= {"a-nightly", "b-nightly"}
    assert api.ok("a_viewer", "GET", "/registry") == api.ok("b_admin", "GET", "/registry")


# --------------------------------------------------------------------------- roles and audit


def test_roles_viewer_reads_member_acts_admin_kills_and_everything_is_audited(api):  # type: ignore[no-untyped-def]
    body = {"run_type": "q_work", "config": {"gate": str(api.tmp / "never")}, "organization": "acme",
            "name": "gated"}
    error_of(api.post("a_viewer", "/runs", json=body), 403, "forbidden")
    run = api.ok("a_member", "POST", "/runs", 201, json=body)
    rid = run["id"]
    assert run["status"] in ("pending", "submitted") and run["display_name"] == "gated"
    assert run["created_by"] == "a_member@example.com" and run["organization"] == "acme"
    assert run["queue_position"] == 1

    assert api.ok("a_viewer", "GET", f"/runs/{rid}")["id"] == rid
    for action in ("cancel", "retry", "boost", "force-kill"):
        error_of(api.post("a_viewer", f"/runs/{rid}/{action}"), 403, "forbidden")
    viewer_bulk = api.ok("a_viewer", "POST", "/runs/bulk-cancel", json={"run_ids": [rid]})
    assert viewer_bulk["results"][0]["error"]["code"] == "forbidden"
    error_of(api.post("a_member", f"/runs/{rid}/force-kill"), 403, "forbidden")

    assert api.ok("a_member", "POST", f"/runs/{rid}/boost") == {"run_id": rid, "priority": 3}
    error_of(api.post("a_member", f"/runs/{rid}/retry"), 409, "not_capable")  # still queued
    assert api.ok("a_member", "POST", f"/runs/{rid}/cancel", json={"reason": "changed my mind"}) == \
        {"run_id": rid, "status": "cancelled"}
    error_of(api.post("a_member", f"/runs/{rid}/cancel"), 409, "invalid_transition")
    retried = api.ok("a_member", "POST", f"/runs/{rid}/retry", 201)
    assert retried["retry_of"] == rid and retried["attempt"] == 2 and retried["priority"] == 3
    killed = api.ok("a_admin", "POST", f"/runs/{retried['id']}/force-kill")
    assert killed == {"run_id": retried["id"], "applied": True, "status": "failed"}
    assert api.ok("root", "POST", f"/runs/{retried['id']}/force-kill")["applied"] is False

    audited = api.ok("a_viewer", "GET", f"/runs/{rid}/audit")["items"]
    trail = [e for e in audited if not e["action"].endswith("_refused")]
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("submit", "a_member@example.com"), ("boost", "a_member@example.com"),
        ("cancel", "a_member@example.com"), ("retry", "a_member@example.com")]
    assert trail[1]["details"]["priority"] == 3 and trail[3]["details"]["new_run"] == retried["id"]
    refused = {(e["action"], e["actor"]): e["details"] for e in audited if e["action"].endswith("_refused")}
    assert refused[("force_kill_refused", "a_member@example.com")]["code"] == "forbidden"
    assert refused[("cancel_refused", "a_viewer@example.com")]["reason"].startswith("Your role (viewer)")
    assert [(e["action"], e["actor"], e["details"]["applied"])
            for e in api.ok("a_viewer", "GET", f"/runs/{retried['id']}/audit")["items"]] == [
        ("force_kill", "a_admin@example.com", True), ("force_kill", "root@example.com", False)]

    # Scheduled tasks: viewers and members read, admins enable, disable and trigger (audited).
    schedules.create_schedule("a-hourly", "q_work", {"ms": 1}, organization_id=api.a.id, interval_seconds=3600,
                              enabled=False)
    for who in ("a_viewer", "a_member"):
        for action in ("enable", "disable", "trigger"):
            error_of(api.post(who, f"/schedules/a-hourly/{action}"), 403, "forbidden")
    assert api.ok("a_admin", "POST", "/schedules/a-hourly/enable")["enabled"] is True
    assert api.ok("a_admin", "POST", "/schedules/a-hourly/disable")["enabled"] is False
    started = api.ok("a_admin", "POST", "/schedules/a-hourly/trigger", 201)
    assert started["origin"] == "scheduled" and started["created_by"] == "schedule:a-hourly"
    error_of(api.post("a_admin", "/schedules/a-hourly/trigger"), 409, "not_capable")  # its run is still queued
    history = api.ok("a_viewer", "GET", "/schedules/a-hourly/history")["items"]
    assert [r["id"] for r in history] == [started["id"]]
    assert api.ok("a_viewer", "GET", "/schedules/a-hourly/history?limit=1")["next_cursor"] is None  # one page
    listed = api.ok("a_viewer", "GET", "/schedules")["items"]
    assert listed[0]["last_run_id"] == started["id"] and listed[0]["organization"] == "acme"
    assert [e["action"] for e in api.ok("a_viewer", "GET", f"/runs/{started['id']}/audit")["items"]] == \
        ["schedule_trigger"]


# --------------------------------------------------------------------------- errors


def test_errors_are_json_with_a_stable_code_and_a_message_naming_the_field(api):  # type: ignore[no-untyped-def]
    assert "run_id" in error_of(api.get("a_admin", "/runs/not-a-uuid"), 422, "invalid_request")
    assert "run_id" in error_of(api.post("a_admin", "/runs/12345/cancel"), 422, "invalid_request")
    assert "limit" in error_of(api.get("a_admin", "/runs", params={"limit": 500}), 422, "invalid_request")
    assert "status" in error_of(api.get("a_admin", "/runs", params={"status": "bogus"}), 422, "invalid_request")
    assert "created_from" in error_of(api.get("a_admin", "/runs", params={"created_from": "yesterday"}), 422,
                                      "invalid_request")
    assert "created_from" in error_of(api.get("a_admin", "/runs", params={"created_from": "0001-01-01T00:00:00+05:00"}),
                                      422, "invalid_request")
    error_of(api.get("a_admin", "/runs", params={"cursor": "not-a-cursor"}), 422, "invalid_cursor")
    error_of(api.get("a_admin", "/runs", params={"cursor": "MQ"}), 422, "invalid_cursor")  # base64 of "1"
    error_of(api.get("a_admin", "/runs", params={"cursor": "WzEsMl0", "sort": "priority"}), 422, "invalid_cursor")
    assert "after" in error_of(api.get("a_admin", f"/runs/{uuid.uuid4()}/logs", params={"after": -1}), 422,
                               "invalid_request")

    def submit(body: Any, **kw: Any) -> httpx.Response:
        return api.post("a_member", "/runs", json=body, **kw)

    assert "nope" in error_of(submit({"run_type": "nope", "organization": "acme"}), 422, "unknown_run_type")
    assert "config.ms" in error_of(submit({"run_type": "q_work", "config": {"ms": -1}, "organization": "acme"}),
                                   422, "invalid_config")
    assert "config.path" in error_of(submit({"run_type": "extraction", "config": {"path": "/etc/passwd"},
                                             "organization": "acme"}), 422, "invalid_config")
    assert "run_type" in error_of(submit({"organization": "acme"}), 422, "invalid_request")
    assert "priority" in error_of(submit({"run_type": "q_work", "organization": "acme", "priority": 9}), 422,
                                  "invalid_request")
    assert "surprise" in error_of(submit({"run_type": "q_work", "organization": "acme", "surprise": 1}), 422,
                                  "invalid_request")
    assert "JSON" in error_of(api.post("a_member", "/runs", content=b"{not json",
                                       headers={"Content-Type": "application/json"}), 422, "invalid_request")
    first = {"run_type": "q_work", "config": {"collection_id": "c-1", "gate": "/nonexistent"}, "organization": "acme"}
    assert submit(first).status_code == 201
    assert "already queued or running" in error_of(submit(first), 409, "duplicate_run")
    busy = submit({"run_type": "q_busy", "config": {"out": "/dev/null"}, "organization": "acme"}).json()
    assert "cannot be boosted" in error_of(api.post("a_member", f"/runs/{busy['id']}/boost"), 409, "not_capable")
    error_of(api.post("a_member", "/runs/bulk-cancel", json={"run_ids": []}), 422, "invalid_request")
    error_of(api.get("a_member", "/no-such-thing"), 404, "not_found")
    error_of(api.call("a_member", "DELETE", "/runs"), 405, "method_not_allowed")


def test_an_unexpected_exception_is_a_json_500_without_a_traceback() -> None:
    app = create_api()

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /srv/app.py line 42")

    with ApiClient(app, raise_app_exceptions=False) as client:
        r = client.get("/api/v1/boom")
    message = error_of(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in message


# --------------------------------------------------------------------------- with a real worker


def test_a_run_created_through_the_api_runs_on_a_worker_with_logs_and_groups(api, worker):  # type: ignore
    run = api.ok("a_member", "POST", "/runs", 201, json={"run_type": "q_work", "config": {"ms": 30, "label": "x"},
                                                          "organization": "acme", "priority": 3})
    done = api.wait_status("a_viewer", run["id"], "completed")
    assert done["results_summary"]["label"] == "x" and done["priority"] == 3
    assert done["started_at"] and done["completed_at"] and done["duration_seconds"] >= 0.03
    assert done["progress"]["percent"] == 100

    full = api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs", params={"after": 0, "limit": 1000})
    events = full["items"]
    assert events[0]["event_type"] == "created" and "complete" in [e["event_type"] for e in events]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events) and not full["has_more"]
    assert len(events) >= 4

    tail = api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs", params={"limit": 2})
    assert [e["id"] for e in tail["items"]] == [e["id"] for e in events[-2:]]
    assert tail["has_more"] and tail["next_cursor"] == events[-1]["id"]
    older = api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs", params={"limit": 2, "before": tail["items"][0]["id"]})
    assert [e["id"] for e in older["items"]] == [e["id"] for e in events[-4:-2]]
    between = api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs",
                     params={"after": events[0]["id"], "before": events[3]["id"]})
    assert [e["id"] for e in between["items"]] == [e["id"] for e in events[1:3]] and not between["has_more"]
    paged, after = [], 0
    while True:
        page = api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs", params={"after": after, "limit": 2})
        paged += page["items"]
        after = page["next_cursor"]
        if not page["has_more"]:
            break
    assert paged == events
    assert api.ok("a_viewer", "GET", f"/runs/{run['id']}/logs", params={"after": after})["items"] == []

    assert run["id"] in {r["id"] for r in api.ok("a_viewer", "GET", "/runs", params={"status": "completed"})["items"]}

    # A group: an upload of two stored files spawns one extraction each.
    assets = [str(store_bytes(api.a.id, f"note{i}.txt", f"hello {i}\n".encode()).id) for i in range(2)]
    upload = api.ok("a_member", "POST", "/runs", 201, json={"run_type": "upload", "config": {"asset_ids": assets},
                                                             "organization": "acme"})
    parent = api.wait_status("a_viewer", upload["id"], "completed", timeout=90)
    assert parent["is_group_parent"] and parent["children"]["completed"] == 2
    children = api.ok("a_viewer", "GET", f"/runs/{upload['id']}/children")["items"]
    assert {c["run_type"] for c in children} == {"extraction"} and {c["status"] for c in children} == {"completed"}
    group = api.ok("a_viewer", "GET", f"/runs/{upload['id']}/group")
    assert group["status"] == "completed" and group["counts"]["total"] == 2 and group["finalized_at"]
    assert api.ok("a_viewer", "GET", f"/runs/{children[0]['id']}/group")["id"] == group["id"]
    error_of(api.get("a_viewer", f"/runs/{run['id']}/group"), 404, "not_found")

    metrics = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(api.client.get("/metrics").text) for m in family.samples}
    assert metrics[("curatore_runs", (("run_type", "q_work"), ("status", "completed")))] == 1
    assert metrics[("curatore_runs", (("run_type", "extraction"), ("status", "completed")))] == 2
    assert metrics[("curatore_run_duration_seconds_count", (("run_type", "extraction"),))] == 2
    assert metrics[("curatore_workers_online", ())] == 1


def test_cancel_bulk_cancel_force_kill_and_retry_of_running_runs(api, worker):  # type: ignore[no-untyped-def]
    gate = api.tmp / "gate"

    def gated(**extra: Any) -> str:
        body = {"run_type": "q_work", "config": {"gate": str(gate), **extra}, "organization": "acme"}
        return api.ok("a_member", "POST", "/runs", 201, json=body)["id"]

    first = gated(label="first")
    api.wait_status("a_viewer", first, "running")
    error_of(api.post("a_viewer", f"/runs/{first}/cancel"), 403, "forbidden")
    assert api.ok("a_member", "POST", f"/runs/{first}/cancel")["status"] == "cancelling"
    cancelled = api.wait_status("a_viewer", first, "cancelled")
    logs = api.ok("a_viewer", "GET", f"/runs/{first}/logs")["items"]
    types = [e["event_type"] for e in logs]
    assert types.index("cancel_requested") < types.index("cancelled")
    assert cancelled["cancel_requested_at"]

    second = gated(label="second")
    api.wait_status("a_viewer", second, "running")
    error_of(api.post("a_member", f"/runs/{second}/force-kill"), 403, "forbidden")
    assert api.ok("a_admin", "POST", f"/runs/{second}/force-kill") == \
        {"run_id": second, "applied": True, "status": "failed"}
    killed = api.ok("a_viewer", "GET", f"/runs/{second}")
    assert killed["error_message"] == "Force-killed by a_admin@example.com"

    retry = api.ok("a_member", "POST", f"/runs/{second}/retry", 201)
    assert retry["retry_of"] == second and retry["attempt"] == 2
    api.wait_status("a_viewer", retry["id"], "running", timeout=60)  # a new worker process took it
    others = [gated(label=f"bulk{i}") for i in range(3)]
    bulk = api.ok("a_member", "POST", "/runs/bulk-cancel",
                  json={"run_ids": [retry["id"], *others, first, str(uuid.uuid4())], "reason": "tidy up"})
    statuses = [(r["status"], (r["error"] or {}).get("code")) for r in bulk["results"]]
    assert statuses[0] == ("cancelling", None)
    assert {s for s, _ in statuses[1:4]} <= {"cancelled", "cancelling"}
    assert statuses[4:] == [(None, "invalid_transition"), (None, "run_not_found")]
    assert bulk["cancelled"] == 4 and bulk["refused"] == 2
    for rid in (retry["id"], *others):
        api.wait_status("a_viewer", rid, "cancelled")
    actions = [e["action"] for e in api.ok("a_viewer", "GET", f"/runs/{retry['id']}/audit")["items"]]
    assert actions == ["cancel"]
    assert [e["action"] for e in api.ok("a_viewer", "GET", f"/runs/{second}/audit")["items"]
            if not e["action"].endswith("_refused")] == ["submit", "force_kill", "retry"]


def test_run_stats_are_the_counts_of_the_runs_in_scope(api):  # type: ignore[no-untyped-def]
    """``GET /runs/stats``: per type, per status and the cards, for the caller's organizations, as the runs are."""
    runs = [pending_run(api.a) for _ in range(3)] + [pending_run(api.b)]
    service.fail(uuid.UUID(runs[0]), "boom")
    service.mark_cancelled(uuid.UUID(runs[1]))
    stats = api.ok("a_member", "GET", "/runs/stats")
    assert stats == {"total": 3, "types": {"q_work": 3},
                     "statuses": {"failed": 1, "cancelled": 1, "pending": 1},
                     "cards": {"pending": 1, "running": 0, "done_24h": 0, "failed_24h": 1, "stale": 0}}
    assert api.ok("a_member", "GET", "/runs/stats", params={"status": ["failed", "pending"]})["types"] == {"q_work": 2}
    assert api.ok("a_member", "GET", "/runs/stats", params={"origin": "webhook"})["total"] == 0
    everything = api.ok("root", "GET", "/runs/stats")
    assert everything["total"] == 4 and everything["cards"]["pending"] == 2
