"""Procedures: named sequences of steps, run by the ``procedure`` job type.

A *step action* is a Python function ``fn(ctx, params) -> dict | None`` registered with
:func:`step_action`. A *procedure* is a name, a description, the parameters it takes and a list of
steps, each naming an action and giving it default params. Procedures are defined in Python
(:func:`define_procedure`) or in YAML files under ``procedures/`` at the project root::

    name: reindex_collection
    description: Re-extract every asset of a collection and put its text in the search index
    params:                       # optional: what a run may pass; `required` ones must be given
      collection_id: {required: true}
    steps:
      - {name: extract, action: extract_assets, params: {only_missing: false}}
      - {name: index, action: index_assets}

A missing required param, an unknown procedure or an action nobody registered fails the run before its
first step, with a message that says which.

A step gets its own params with the run's params over them (the run's ``config.params``).
The built-in actions below do real work on the organization's stored assets.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backend.config import PROJECT_ROOT
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.errors import CuratoreError, InvalidConfig, NotFound, UnsupportedFile
from backend.extract.formats import extract
from backend.search import index_asset
from backend.storage import assets as storage
from backend.storage.assets import _path_for

StepAction = Callable[[Any, dict[str, Any]], "dict[str, Any] | None"]
PROCEDURES_DIR = PROJECT_ROOT / "procedures"
MAX_LISTED = 50  # ids listed in a step's results; counts are always complete


class ProcedureError(CuratoreError):
    """The procedure is not defined correctly."""

    code = "procedure_error"


class UnknownProcedure(NotFound):
    """No such procedure."""

    code = "unknown_procedure"


@dataclass(frozen=True)
class Step:
    name: str
    action: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Procedure:
    name: str
    description: str
    steps: tuple[Step, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {required: bool, default: ...}
    source: str = "python"

    def bind(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's params checked against what the procedure declares, defaults filled in."""
        if self.params:
            unknown = sorted(set(given) - set(self.params))
            if unknown:
                raise InvalidConfig(f"Procedure {self.name!r} takes no param(s) {', '.join(unknown)}; "
                                    f"it takes {', '.join(sorted(self.params))}.")
        bound = {k: spec["default"] for k, spec in self.params.items() if "default" in spec}
        bound.update(given)
        missing = [k for k, spec in self.params.items() if spec.get("required") and bound.get(k) in (None, "")]
        if missing:
            raise InvalidConfig(f"Procedure {self.name!r} needs param(s) {', '.join(missing)}.")
        return bound

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source, "params": self.params,
                "steps": [{"name": s.name, "action": s.action, "params": s.params} for s in self.steps]}


_actions: dict[str, StepAction] = {}
_python: dict[str, Procedure] = {}
_yaml: dict[str, Procedure] | None = None
_yaml_errors: dict[str, str] = {}
_lock = threading.Lock()


def step_action(name: str) -> Callable[[StepAction], StepAction]:
    """Register ``fn(ctx, params) -> dict | None`` as the step action ``name``."""

    def decorate(fn: StepAction) -> StepAction:
        _actions[name] = fn
        return fn

    return decorate


def define_procedure(
    name: str,
    description: str,
    steps: list[Step | dict[str, Any]],
    params: dict[str, dict[str, Any]] | None = None,
) -> Procedure:
    """Define (or redefine) a procedure in Python. Steps are :class:`Step` or ``{name, action, params}``."""
    proc = _build(name, description, steps, params, source="python")
    _python[name] = proc
    return proc


def get_procedure(name: str) -> Procedure:
    """The procedure ``name``, its actions checked; raises :class:`UnknownProcedure` with the known names."""
    proc = _python.get(name) or _yaml_procedures().get(name)
    if proc is None:
        if name in _yaml_errors:
            raise ProcedureError(_yaml_errors[name])
        known = ", ".join(sorted(all_procedures())) or "none"
        raise UnknownProcedure(f"Unknown procedure {name!r}. Known procedures: {known}.")
    for step in proc.steps:
        if step.action not in _actions:
            raise ProcedureError(f"Procedure {name!r}, step {step.name!r} names unknown action {step.action!r}. "
                                 f"Known actions: {', '.join(sorted(_actions))}.")
    return proc


def get_action(name: str) -> StepAction:
    return _actions[name]


def all_procedures() -> dict[str, Procedure]:
    return {**_yaml_procedures(), **_python}


def actions() -> list[str]:
    return sorted(_actions)


# --------------------------------------------------------------------------- YAML


def load_directory(directory: Path) -> tuple[dict[str, Procedure], dict[str, str]]:
    """Read every ``*.yaml``/``*.yml`` file of ``directory``: (procedures by name, error by name or file)."""
    found: dict[str, Procedure] = {}
    errors: dict[str, str] = {}
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []
    if not files:
        return found, errors
    try:
        import yaml
    except ImportError:
        for path in files:
            errors[path.stem] = f"{path.name}: procedures in YAML need the PyYAML package (pip install pyyaml)."
        return found, errors
    for path in files:
        data: Any = None
        try:
            data = yaml.safe_load(path.read_text())
            proc = _from_mapping(data, path.name)
        except (OSError, yaml.YAMLError, ProcedureError) as exc:
            named = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None
            errors[named or path.stem] = exc.message if isinstance(exc, ProcedureError) else f"{path.name}: {exc}"
            continue
        if proc.name in found or proc.name in _python:
            errors[proc.name] = f"{path.name}: procedure {proc.name!r} is defined twice."
            found.pop(proc.name, None)
            continue
        found[proc.name] = proc
    return found, errors


def reload_yaml(directory: Path | None = None) -> None:
    """Read the procedures directory again (it is read once per process, on first use)."""
    global _yaml, _yaml_errors
    with _lock:
        _yaml, _yaml_errors = load_directory(directory or PROCEDURES_DIR)


def _yaml_procedures() -> dict[str, Procedure]:
    if _yaml is None:
        reload_yaml()
    return _yaml or {}


def _from_mapping(data: Any, where: str) -> Procedure:
    if not isinstance(data, dict):
        raise ProcedureError(f"{where}: a procedure file holds a mapping with name, description and steps.")
    unknown = set(data) - {"name", "description", "params", "steps"}
    if unknown:
        raise ProcedureError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, description, params, steps.")
    return _build(data.get("name"), data.get("description") or "", data.get("steps"), data.get("params"),
                  source=where)


def _build(name: Any, description: str, steps: Any, params: Any, *, source: str) -> Procedure:
    where = source if source != "python" else f"procedure {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise ProcedureError(f"{where}: a procedure needs a name.")
    if not isinstance(steps, list) or not steps:
        raise ProcedureError(f"{where}: procedure {name!r} needs a non-empty list of steps.")
    built: list[Step] = []
    for n, raw in enumerate(steps, 1):
        if isinstance(raw, Step):
            built.append(raw)
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("action"), str):
            raise ProcedureError(f"{where}: step {n} of {name!r} needs an action (and a name).")
        extra = set(raw) - {"name", "action", "params"}
        if extra:
            raise ProcedureError(f"{where}: step {n} of {name!r} has unknown keys {sorted(extra)}.")
        step_params = raw.get("params") or {}
        if not isinstance(step_params, dict):
            raise ProcedureError(f"{where}: the params of step {n} of {name!r} must be a mapping.")
        built.append(Step(str(raw.get("name") or raw["action"]), raw["action"], dict(step_params)))
    names = [s.name for s in built]
    if len(set(names)) != len(names):
        raise ProcedureError(f"{where}: the steps of {name!r} need distinct names.")
    declared: dict[str, dict[str, Any]] = {}
    for key, spec in (params or {}).items():
        if spec is None:
            spec = {}
        if not isinstance(spec, dict) or set(spec) - {"required", "default", "description"}:
            raise ProcedureError(f"{where}: param {key!r} of {name!r} takes required, default, description.")
        declared[str(key)] = dict(spec)
    return Procedure(name.strip(), str(description), tuple(built), declared, source)


# --------------------------------------------------------------------------- built-in actions


def _assets_in_scope(
    ctx: Any, params: dict[str, Any], *, only_missing: bool = False, must_exist: bool = True
) -> list[Asset]:
    """The organization's live assets, of one collection when ``collection_id`` is given
    (a collection without assets is an error unless ``must_exist`` is False)."""
    query = select(Asset).where(Asset.organization_id == ctx.organization_id, Asset.deleted_at.is_(None))
    if params.get("collection_id"):
        query = query.where(Asset.collection_id == str(params["collection_id"]))
    if only_missing:
        query = query.where(Asset.extraction_status != "completed")
    limit = params.get("limit")
    query = query.order_by(Asset.created_at, Asset.id)
    if limit:
        query = query.limit(int(limit))
    found = list(in_transaction(lambda s: s.execute(query).scalars().all()))
    if not found and params.get("collection_id") and must_exist and not only_missing:
        raise NotFound(f"Collection {params['collection_id']!r} has no assets.")
    return found


def _item_progress(ctx: Any, n: int, total: int, asset: Asset) -> None:
    ctx.progress(item=f"{asset.filename} ({n}/{total})")


@step_action("verify_checksums")
def verify_checksums(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Read every stored file again and compare its SHA-256 with the one recorded when it was stored."""
    found = _assets_in_scope(ctx, params)
    ok, mismatched, missing, checked_bytes = 0, [], [], 0
    for n, asset in enumerate(found, 1):
        ctx.check_cancelled()
        _item_progress(ctx, n, len(found), asset)
        digest = hashlib.sha256()
        try:
            with open(_path_for(asset.storage_key), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    checked_bytes += len(chunk)
        except FileNotFoundError:
            missing.append(str(asset.id))
            continue
        if digest.hexdigest() == asset.sha256:
            ok += 1
        else:
            mismatched.append(str(asset.id))
    if mismatched or missing:
        ctx.warn(f"{len(mismatched)} stored files do not match their checksum, {len(missing)} are missing",
                 "integrity", mismatched=mismatched[:MAX_LISTED], missing=missing[:MAX_LISTED])
    return {"assets": len(found), "ok": ok, "mismatched": len(mismatched), "missing": len(missing),
            "bytes": checked_bytes, "mismatched_ids": mismatched[:MAX_LISTED], "missing_ids": missing[:MAX_LISTED]}


@step_action("extraction_report")
def extraction_report(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Count assets by extraction status and list the ones whose extraction failed or never ran."""
    scope = select(Asset.extraction_status, func.count()).where(
        Asset.organization_id == ctx.organization_id, Asset.deleted_at.is_(None))
    if params.get("collection_id"):
        scope = scope.where(Asset.collection_id == str(params["collection_id"]))
    counts = dict(in_transaction(lambda s: s.execute(scope.group_by(Asset.extraction_status)).all()))
    failed = [str(a.id) for a in _assets_in_scope(ctx, params, only_missing=True, must_exist=False)
              if a.extraction_status == "failed"]
    return {"by_status": counts, "failed_ids": failed[:MAX_LISTED], "not_extracted": counts.get("none", 0)}


@step_action("extract_assets")
def extract_assets(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Extract the text of stored files again, in this run (``only_missing``: only those without text yet;
    ``index``: also put each text in the search index)."""
    only_missing = bool(params.get("only_missing", False))
    index = bool(params.get("index", False))
    found = _assets_in_scope(ctx, params, only_missing=only_missing)
    extracted, failed, characters = 0, [], 0
    for n, asset in enumerate(found, 1):
        ctx.check_cancelled()
        _item_progress(ctx, n, len(found), asset)
        try:
            result = extract(asset.filename, storage.read_bytes(asset))
        except CuratoreError as exc:  # unsupported or missing file: recorded on the asset, the step goes on
            if isinstance(exc, UnsupportedFile):
                storage.save_extraction(asset.id, None, {"error": exc.message}, "failed")
            failed.append({"asset_id": str(asset.id), "error": exc.message})
            continue
        storage.save_extraction(asset.id, result.text, {"format": result.format, **result.meta}, "completed")
        if index:
            index_asset(None, asset.id, asset.organization_id, asset.filename, result.text)
        extracted += 1
        characters += len(result.text)
    if failed:
        ctx.warn(f"{len(failed)} of {len(found)} files could not be extracted", "extract_failed",
                 failed=failed[:MAX_LISTED])
    return {"assets": len(found), "extracted": extracted, "failed": len(failed), "characters": characters,
            "indexed": extracted if index else 0}


@step_action("index_assets")
def index_assets(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Put the extracted text of assets in the full-text search index (replacing what it held)."""
    found = _assets_in_scope(ctx, params)
    indexed = skipped = 0
    for n, asset in enumerate(found, 1):
        ctx.check_cancelled()
        _item_progress(ctx, n, len(found), asset)
        if asset.extracted_text is None:
            skipped += 1
            continue
        index_asset(None, asset.id, asset.organization_id, asset.filename, asset.extracted_text)
        indexed += 1
    return {"assets": len(found), "indexed": indexed, "skipped_without_text": skipped}


define_procedure(
    "verify_assets",
    "Re-read every stored file, compare it with its recorded SHA-256, and report extraction statuses",
    [Step("checksums", "verify_checksums"), Step("extractions", "extraction_report")],
    params={"collection_id": {"description": "only this collection"}, "limit": {"description": "at most this many"}},
)
