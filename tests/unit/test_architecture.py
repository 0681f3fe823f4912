"""The architecture as written down: the import-linter contracts in pyproject.toml hold, a forbidden import
breaks them, docs/architecture.md draws the same layers, and no import inside a function hides a dependency."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    only = [arg for cid in contract_ids for arg in ("--contract", cid)]
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *only], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def contracts() -> list[dict[str, object]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


@pytest.fixture(scope="module")
def copy_of_the_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in ("backend", "curatore_ui"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "files"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(("module", "added", "contract"), [
    ("backend/runs/service.py", "import celery", "state-machine-without-celery"),
    ("backend/runs/groups.py", "from backend.worker import base", "layers"),
    ("backend/connectors/sam.py", "from backend.runs import service", "services"),
    ("backend/queues/dispatcher.py", "from backend.queues import dispatch", "acyclic"),
    ("backend/db/engine.py", "import reflex", "no-reflex-in-engine"),
    ("backend/api/runs.py", "from celery import Celery", "celery-behind-one-door"),
])
def test_a_forbidden_import_breaks_a_contract(copy_of_the_tree: Path, module: str, added: str, contract: str) -> None:
    path = copy_of_the_tree / module
    original = path.read_text()
    assert lint_imports(copy_of_the_tree, contract).returncode == 0  # kept before
    path.write_text(original + f"\n{added}  # the forbidden import\n")
    try:
        result = lint_imports(copy_of_the_tree, contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in result.stdout


def test_the_architecture_doc_draws_the_layers() -> None:
    """docs/architecture.md's layer diagram lists the layers contract's layers, top to bottom."""
    layers = next(c for c in contracts() if c["id"] == "layers")["layers"]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", doc, re.S)
    assert block, "docs/architecture.md has no layer diagram (a ``` block after <!-- layers -->)"
    drawn = [" | ".join(re.findall(r"(?:backend\.\w+|curatore_ui)", line))
             for line in block.group(1).splitlines() if re.search(r"backend\.\w+|curatore_ui", line)]
    assert drawn == [re.sub(r"\s*\|\s*", " | ", layer) for layer in layers]


def test_imports_inside_functions_say_why() -> None:
    """An import of the product inside a function hides a dependency from the reader; the few that are
    deliberate (a module that reads the settings when imported, a plugin named in the configuration) carry a
    one-line reason."""
    unexplained = []
    for path in sorted((ROOT / "backend").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"^\s+(from backend[\w.]* import |import backend)", line) and "  # " not in line:
                unexplained.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not unexplained, "\n".join(unexplained)
