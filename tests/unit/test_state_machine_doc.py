"""The diagram in docs/state_machine.md, the table in states.py and the code agree.

The diagram must draw exactly ``TRANSITIONS`` (every edge labelled by its trigger),
terminal statuses have no way out, and no module of ``backend/`` outside
``backend/runs/`` writes a run's status.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from backend.db.states import EVENT_TYPES, TERMINAL, TRANSITIONS, RunStatus

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "state_machine.md"
BACKEND = ROOT / "backend"
RUNS = BACKEND / "runs"

EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*(?::\s*(.*?))?\s*$")
TRIGGERS = ("dispatcher", "worker", "cancel", "sweeper", "activity", "force-kill", "forced", "recovery", "create_run")


# --------------------------------------------------------------------------- the diagram


def mermaid_block(text: str) -> str:
    blocks = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    assert len(blocks) == 1, f"expected one mermaid block in {DOC.name}, found {len(blocks)}"
    assert blocks[0].lstrip().startswith("stateDiagram-v2"), "the mermaid block must be a stateDiagram-v2"
    return blocks[0]


def parse_edges(block: str) -> dict[tuple[str, str], str]:
    """Every ``a --> b : label`` line, as {(a, b): label}; a repeated edge is an error."""
    edges: dict[tuple[str, str], str] = {}
    for line in block.splitlines():
        if "-->" not in line:
            continue
        match = EDGE.match(line)
        assert match, f"cannot parse diagram line {line!r}"
        a, b, label = match.groups()
        assert (a, b) not in edges, f"edge {a} --> {b} is drawn twice"
        edges[(a, b)] = (label or "").strip()
    return edges


def status_edges(edges: dict[tuple[str, str], str]) -> set[tuple[RunStatus, RunStatus]]:
    """The edges between statuses (the ``[*]`` start marker is not a status)."""
    out = set()
    for a, b in edges:
        if "[*]" in (a, b):
            continue
        out.add((RunStatus(a), RunStatus(b)))  # an unknown name raises ValueError: a typo in the diagram
    return out


def table_edges() -> set[tuple[RunStatus, RunStatus]]:
    return {(a, b) for a, targets in TRANSITIONS.items() for b in targets}


@pytest.fixture(scope="module")
def doc_edges() -> dict[tuple[str, str], str]:
    return parse_edges(mermaid_block(DOC.read_text()))


def test_diagram_draws_exactly_the_transition_table(doc_edges):
    drawn = status_edges(doc_edges)
    table = table_edges()
    missing = sorted(f"{a.value} --> {b.value}" for a, b in table - drawn)
    extra = sorted(f"{a.value} --> {b.value}" for a, b in drawn - table)
    assert not missing and not extra, f"not drawn: {missing}; drawn but not allowed: {extra}"


def test_every_edge_is_labelled_by_its_trigger(doc_edges):
    for (a, b), label in doc_edges.items():
        assert label, f"edge {a} --> {b} has no trigger label"
        assert any(t in label for t in TRIGGERS), f"edge {a} --> {b}: {label!r} names no known trigger {TRIGGERS}"


def test_only_the_start_marker_enters_pending(doc_edges):
    starts = [(a, b) for a, b in doc_edges if a == "[*]"]
    assert starts == [("[*]", "pending")]
    assert not [(a, b) for a, b in doc_edges if b == "[*]"], "no status leaves the machine; terminals just stay"


def test_terminal_statuses_have_no_way_out(doc_edges):
    assert TERMINAL == {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED}
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset(), f"{status.value} is terminal but the table lets it change"
        assert not [b for a, b in status_edges(doc_edges) if a is status], f"{status.value} has an edge out in the doc"
    for status in set(RunStatus) - TERMINAL:
        assert TRANSITIONS[status], f"{status.value} is not terminal, so something must move a run out of it"


def test_table_covers_every_status_and_every_target_has_an_event_type():
    assert set(TRANSITIONS) == set(RunStatus)
    for a, targets in TRANSITIONS.items():
        assert a not in targets, f"{a.value} --> {a.value} would be a change that changes nothing"
    assert set(EVENT_TYPES) == set(RunStatus)


def test_status_table_lists_every_status_once():
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|", DOC.read_text(), re.M)
    statuses = [r for r in rows if r in {s.value for s in RunStatus}]
    assert sorted(statuses) == sorted(s.value for s in RunStatus), statuses


def test_parser_sees_a_wrong_diagram():
    """The check above can fail: a missing, an extra and a misspelt edge are all caught."""
    block = "stateDiagram-v2\n" + "\n".join(f"  {a.value} --> {b.value} : worker" for a, b in table_edges())
    assert status_edges(parse_edges(block)) == table_edges()
    dropped = block.replace("  running --> stale : worker\n", "").replace("\n  running --> stale : worker", "")
    assert status_edges(parse_edges(dropped)) != table_edges()
    assert status_edges(parse_edges(block + "\n  completed --> running : worker")) != table_edges()
    with pytest.raises(ValueError):
        status_edges(parse_edges(block + "\n  runing --> completed : worker"))


# --------------------------------------------------------------------------- nobody else writes status


def _names_run(node: ast.AST) -> bool:
    """``Run``, ``models.Run`` or ``Run.__table__``."""
    if isinstance(node, ast.Attribute) and node.attr == "__table__":
        node = node.value
    return (isinstance(node, ast.Name) and node.id == "Run") or (isinstance(node, ast.Attribute) and node.attr == "Run")


def _call_name(node: ast.Call) -> str:
    fn = node.func
    return fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""


def _mentions_status(nodes: list[ast.AST]) -> bool:
    """``status=...``, a ``"status"`` key or ``Run.status`` anywhere in ``nodes``."""
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.keyword) and sub.arg == "status":
                return True
            if isinstance(sub, ast.Constant) and sub.value == "status":
                return True
            if isinstance(sub, ast.Attribute) and sub.attr == "status" and _names_run(sub.value):
                return True
    return False


def _is_run_write(node: ast.AST) -> bool:
    """``update(Run)`` or ``insert(Run)`` (also ``sa.update(models.Run.__table__)``)."""
    return (isinstance(node, ast.Call) and _call_name(node) in ("update", "insert") and bool(node.args)
            and _names_run(node.args[0]))


def _dynamic(values_call: ast.Call) -> bool:
    """``.values(**stamp)`` or ``.values(some_dict)``: the columns are not visible, so status may be one."""
    return any(k.arg is None for k in values_call.keywords) or any(
        not isinstance(a, ast.Dict) for a in values_call.args
    )


def _of_other_table(values_call: ast.Call) -> bool:
    """``update(RunGroup)....values(...)``: a chain rooted at a write to another table."""
    node: ast.AST = values_call
    while True:
        if isinstance(node, ast.Call):
            if _call_name(node) in ("update", "insert") and node.args and node is not values_call:
                return not _names_run(node.args[0])
            node = node.func
        elif isinstance(node, ast.Attribute):
            node = node.value
        else:
            return False


SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of one scope, not those of the functions and classes nested in it."""
    out, stack = [], list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return out


RAW_SQL = re.compile(r"\b(update\s+\"?runs\"?\s+set\b[^;]*\bstatus\b|insert\s+into\s+\"?runs\"?)", re.I | re.S)


def status_writes(source: str, filename: str = "<source>") -> list[str]:
    """Places in ``source`` that write a run's status.

    - a scope (function, class or module body) that builds ``update(Run)``/``insert(Run)`` and
      passes ``status`` to a ``.values(...)`` (or to the ``execute`` that runs the statement), or
      passes it columns the source does not show (``.values(**fields)``);
    - ``Run(..., status=...)``;
    - an assignment to ``<anything>.status`` or ``setattr(x, "status", ...)``;
    - raw SQL that updates ``runs`` setting ``status``, or inserts into ``runs``.
    """
    tree = ast.parse(source, filename)
    found: list[str] = []

    def where(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for scope in ast.walk(tree):
        if not isinstance(scope, SCOPES):
            continue
        nodes = _own_nodes(scope)
        writes = [n for n in nodes if _is_run_write(n)]
        if not writes:
            continue
        calls = [n for n in nodes if isinstance(n, ast.Call)]
        setting = [c for c in calls if _call_name(c) == "values" and not _of_other_table(c)
                   and (_mentions_status([*c.args, *c.keywords]) or _dynamic(c))]
        setting += [c for c in calls if any(_is_run_write(a) for a in c.args)
                    and _mentions_status([a for a in c.args if not _is_run_write(a)] + list(c.keywords))]
        for call in setting:
            where(call, "update(Run) setting status")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if _names_run(node.func) and any(k.arg == "status" for k in node.keywords):
                where(node, "Run(status=...)")
            elif (_call_name(node) == "setattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value == "status"):
                where(node, 'setattr(..., "status", ...)')
        elif isinstance(node, ast.Attribute) and node.attr == "status" and isinstance(node.ctx, (ast.Store, ast.Del)):
            where(node, f"assignment to {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and RAW_SQL.search(node.value):
            where(node, "raw SQL writing runs")
    return found


BAD_EXAMPLES = [
    "session.execute(update(Run).where(Run.id == rid).values(status=RunStatus.COMPLETED))",
    "s.execute(update(Run).where(Run.id == rid).values({Run.status: 'failed'}))",
    "stmt = sa.update(models.Run).values({'status': 'failed'})",
    "s.execute(update(Run).where(Run.id == rid).values(**fields))",
    "run.status = RunStatus.CANCELLED",
    "run.status: RunStatus = RunStatus.CANCELLED",
    "self.run.status = 'failed'",
    "setattr(run, 'status', 'failed')",
    "session.add(Run(organization_id=o, run_type='x', queue='q', status=RunStatus.RUNNING))",
    "session.execute(text('UPDATE runs SET status = :s WHERE id = :id'), {'s': 'failed'})",
    "def f(s, rid):\n    q = update(Run.__table__).where(Run.id == rid)\n    s.execute(q.values(status='failed'))\n",
]

GOOD_EXAMPLES = [
    "status = RunStatus(run.status)",
    "if run.status in (S.CANCELLING, S.CANCELLED):\n    pass",
    "s.execute(update(Asset).where(Asset.id == a).values(extraction_status=status))",
    "s.execute(update(Run).where(Run.id == rid).values(progress=p, last_activity_at=now))",
    "rows = s.execute(select(Run).where(Run.status == RunStatus.PENDING)).all()",
    "service.complete(run_id, results)",
    "s.execute(update(Run).where(Run.id == rid, Run.status == S.RUNNING).values(progress=p))",
    "def f(s):\n    s.execute(update(Run).values(is_group_parent=True))\n"
    "    s.execute(update(RunGroup).where(RunGroup.id == g).values(status='partial'))\n",
]


@pytest.mark.parametrize("source", BAD_EXAMPLES)
def test_scanner_catches_a_status_write(source):
    assert status_writes(source), f"the scanner missed: {source}"


@pytest.mark.parametrize("source", GOOD_EXAMPLES)
def test_scanner_lets_reads_and_other_writes_pass(source):
    assert status_writes(source) == []


def test_scanner_sees_the_writes_inside_backend_runs():
    """The one place that does write status is found, so the scan of the rest means something."""
    hits = status_writes((RUNS / "service.py").read_text(), "backend/runs/service.py")
    assert hits, "the scanner no longer recognizes service.transition()'s own UPDATE"


def test_nothing_outside_backend_runs_writes_a_run_status():
    files = [p for p in BACKEND.rglob("*.py") if RUNS not in p.parents and "__pycache__" not in p.parts]
    assert len(files) > 10, files  # the scan really looked at the engine
    hits = [hit for path in files for hit in status_writes(path.read_text(), str(path.relative_to(ROOT)))]
    assert hits == [], "a run's status is written outside backend/runs/:\n" + "\n".join(hits)
