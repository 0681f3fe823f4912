"""Property: whatever JSON is sent to ``POST /api/v1/ops/runs`` (any Unicode, lone surrogates and NUL
included, in keys and values; deep nesting; large bodies; any type for priority, name, run type, organization),
the answer is 2xx or 4xx, never 5xx, and the run list still answers 200 afterwards, on SQLite and on
PostgreSQL + Redis.

Bodies are written as raw JSON text, so they can hold what a well-behaved client would refuse to encode.
The example count is bounded and derandomized so the suite's time stays predictable on a 2-core machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from backend.api.app import PREFIX, create_api
from backend.auth import users
from tests.api_client import ApiClient

pytestmark = pytest.mark.integration

ODD = ["\x00", "\udfff", "\ud800", "\udc00x", "\ufffd", "\U0001f600", "\u202e", "\\", '"', "\n"]
text = st.lists(st.one_of(st.characters(), st.sampled_from(ODD)), max_size=12).map("".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(text, inner, max_size=4)), max_leaves=12)
DEEP = "__deep__"  # placeholders, replaced in the JSON text by deep nesting or a long string
BIG = "__big__"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: JSON text with ``NaN``, ``\\udfff`` escapes, or (unescaped) bytes that are not UTF-8.
    Most bodies are well shaped but for their config, so that they reach the run checks; in the others one
    field (or the whole config) is any JSON at all."""
    clean = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20)), max_size=3)
    name = st.from_regex(r"[a-z]{1,16}", fullmatch=True)  # a procedure name: one run at a time each (409)
    procedure = st.fixed_dictionaries({"procedure": name,
                                       "params": st.one_of(clean, values)})
    stage = st.fixed_dictionaries({"run_type": st.sampled_from(["extraction", "pipeline", "deletion", "nope"]),
                                   "config": st.one_of(values, st.just(DEEP))})
    pipeline = st.fixed_dictionaries({"stages": st.lists(stage, max_size=3)})
    run_type = draw(st.sampled_from(["procedure", "procedure", "pipeline", "extraction", "nope"]))
    config = {"procedure": procedure, "pipeline": pipeline}.get(run_type, values)
    body: dict[str, Any] = {"run_type": run_type, "organization": "acme",
                            "config": draw(st.one_of(config, config, st.just(DEEP), st.just(BIG)))}
    if draw(st.booleans()):
        body["priority"] = draw(st.integers(-1, 5))
    if draw(st.booleans()):
        body["name"] = draw(st.one_of(st.text(max_size=30), text))
    broken = draw(st.sampled_from([None] * 6 + ["run_type", "organization", "config", "priority", "name"]))
    if broken:
        body[broken] = draw(values)
    if draw(st.integers(0, 9)) == 4:  # not a bound, which Hypothesis draws more often
        body[draw(text)] = draw(values)  # an unknown (odd) key
    raw = json.dumps(body, ensure_ascii=draw(st.sampled_from([True] * 7 + [False])))
    depth = draw(st.one_of(st.integers(1, 40), st.integers(40, 3000)))
    size = draw(st.sampled_from([10, 200_000, 300_000, 1_100_000]))
    raw = raw.replace(json.dumps(DEEP), '{"a": ' * depth + "0" + "}" * depth)
    raw = raw.replace(json.dumps(BIG), json.dumps({"s": "x" * size}), 1)
    return raw.encode("utf-8", "surrogatepass")


@pytest.fixture
def member(backend, org) -> Iterator[tuple[ApiClient, dict[str, str]]]:  # type: ignore[no-untyped-def]
    user = users.create_user("member@example.com", "correct horse battery")
    users.set_role(user.id, org.id, "member")
    headers = {"Authorization": f"Bearer {users.create_token(user.id, 'property')[1]}"}
    with ApiClient(create_api(), raise_app_exceptions=False) as client:
        yield client, headers


@settings(max_examples=150, deadline=10_000, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=bodies())
@example(body=b'{"run_type": "procedure", "organization": "acme", "config": {"procedure": "extract_missing"}}')
@example(body=b'{"run_type": "procedure", "organization": "acme", '
              b'"config": {"procedure": "p", "params": {"x": "\\udfff"}}}')
def test_any_json_to_submit_is_answered_without_a_server_error(member, body):
    client, headers = member
    r = client.post(f"{PREFIX}/runs", content=body, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])
    event(f"{r.status_code} {r.json()['error']['code'] if r.status_code >= 400 else 'created'}")
    assert r.headers["content-type"].startswith("application/json")
    listed = client.get(f"{PREFIX}/runs?limit=200", headers=headers)
    assert listed.status_code == 200, listed.text[:300]
