"""The job-type registry: the single source of truth for every job type.

The worker reads it to build its Celery tasks and queues, the API to validate
and describe runs, the UI for labels, icons, colors, phases, toasts and links.
Adding a job type is one :func:`register` call (or one entry in
``builtin_types``) plus one executor function ``fn(ctx, config) -> dict``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.config import get_settings
from backend.errors import CuratoreError, InvalidConfig, UnknownRunType
from backend.jobtypes import configs as c
from backend.validation import MAX_CONFIG_BYTES, check_input


@dataclass(frozen=True)
class QueueDef:
    name: str
    label: str
    max_concurrency: int
    description: str = ""


@dataclass(frozen=True)
class Capabilities:
    cancel: bool = True
    retry: bool = True
    throttle: bool = False
    boost: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retries: ``max_attempts`` counts the first attempt."""

    max_attempts: int = 1
    backoff_seconds: float = 30.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 600.0

    def delay_for(self, attempt: int) -> float:
        return min(self.backoff_seconds * self.backoff_factor ** max(attempt - 1, 0), self.max_backoff_seconds)


@dataclass(frozen=True)
class RelatedResource:
    label: str
    name: str
    href: str
    icon: str
    color: str


ResourceLink = Callable[[dict[str, Any], str], RelatedResource | None]
Executor = Callable[..., dict[str, Any] | None]


@dataclass(frozen=True)
class JobType:
    key: str
    label: str
    icon: str  # a lucide icon name
    color: str  # a Radix color name
    queue: str
    timeout_seconds: int
    phases: tuple[str, ...]
    config_model: type[BaseModel]
    executor: str | Executor  # "module:function" or the function itself
    description: str = ""
    max_concurrency: int | None = None
    capabilities: Capabilities = Capabilities()
    resource_type: str | None = None
    resource_id_field: str | None = None  # the config field naming the resource
    has_child_jobs: bool = False
    cancel_cascade: Literal["queued", "all"] = "queued"
    retry_policy: RetryPolicy = RetryPolicy()
    dedupe_cooldown_seconds: int = 0  # refuse the same job on the same resource this long after one completed
    default_priority: int = 2
    completed_toast: str = "{label} completed"
    failed_toast: str = "{label} failed: {error}"
    resource_link: ResourceLink | None = None
    aliases: tuple[str, ...] = ()
    # Who may submit it: the least role in the run's organization; a system-only type is submitted by
    # system admins (and the engine itself) only, and its runs belong to no tenant.
    submit_role: Literal["viewer", "member", "admin"] = "member"
    system_only: bool = False
    # "module:function" (or the function) called as fn(config, organization_id) with the validated config
    # when a run is created: it refuses (InvalidConfig) what the organization may not name, such as a
    # connection that is not configured for it.
    check_config: str | Callable[[dict[str, Any], Any], None] | None = None

    @property
    def task_name(self) -> str:
        return f"curatore.jobs.{self.key}"

    def load_executor(self) -> Executor:
        if callable(self.executor):
            return self.executor
        module, _, name = self.executor.partition(":")
        return getattr(importlib.import_module(module), name)

    def load_check_config(self) -> Callable[[dict[str, Any], Any], None] | None:
        if self.check_config is None or callable(self.check_config):
            return self.check_config
        module, _, name = self.check_config.partition(":")
        return getattr(importlib.import_module(module), name)

    def resource_id_from(self, config: dict[str, Any]) -> str | None:
        if self.resource_id_field and config.get(self.resource_id_field) is not None:
            return str(config[self.resource_id_field])
        return None

    def toast(self, outcome: Literal["completed", "failed"], *, name: str | None, error: str | None = None) -> str:
        template = self.completed_toast if outcome == "completed" else self.failed_toast
        return template.format(label=self.label, name=name or self.label, error=error or "unknown error")

    def public(self) -> dict[str, Any]:
        """What the API and UI show of a type (JSON-friendly)."""
        return {
            "key": self.key,
            "label": self.label,
            "icon": self.icon,
            "color": self.color,
            "queue": self.queue,
            "timeout_seconds": self.timeout_seconds,
            "max_concurrency": self.max_concurrency,
            "phases": list(self.phases),
            "capabilities": vars(self.capabilities),
            "resource_type": self.resource_type,
            "has_child_jobs": self.has_child_jobs,
            "cancel_cascade": self.cancel_cascade,
            "retry_policy": vars(self.retry_policy),
            "aliases": list(self.aliases),
            "submit_role": self.submit_role,
            "system_only": self.system_only,
            "description": self.description,
            "config_schema": self.config_model.model_json_schema(),
        }


def _link(label: str, icon: str, color: str, path: str, field_name: str) -> ResourceLink:
    def build(config: dict[str, Any], org_slug: str) -> RelatedResource | None:
        value = config.get(field_name)
        if value is None:
            return None
        return RelatedResource(label, str(value), f"/orgs/{org_slug}/{path}/{value}", icon, color)

    return build


BUILTIN_QUEUES: tuple[QueueDef, ...] = (
    QueueDef("extraction", "Extraction", 4, "Text extraction from stored files"),
    QueueDef("sync", "Syncs", 2, "SharePoint, SAM.gov and forecast connectors"),
    QueueDef("scrape", "Web scrapes", 2, "Same-site crawls"),
    QueueDef("import", "Imports", 2, "Uploads and Salesforce imports"),
    QueueDef("default", "Default", 4, "Procedures, pipelines and deletions"),
    QueueDef("maintenance", "Maintenance", 1, "Retention, recovery and health"),
)


def builtin_types() -> list[JobType]:
    J = "backend.worker.jobs"
    return [
        JobType(
            "extraction", "Extraction", "file-text", "blue", "extraction", 600, ("extracting", "indexing"),
            c.ExtractionConfig, f"{J}.extraction:run",
            description="Text out of a stored file", resource_type="asset", resource_id_field="asset_id",
            capabilities=Capabilities(throttle=True, boost=True), default_priority=2,
            retry_policy=RetryPolicy(max_attempts=2, backoff_seconds=10),
            completed_toast="Extracted {name}", failed_toast="Extraction of {name} failed: {error}",
            resource_link=_link("Asset", "file", "blue", "assets", "asset_id"),
            aliases=("extraction_enhancement", "document_extraction"),
        ),
        JobType(
            "upload", "Upload", "upload", "cyan", "import", 900, ("uploading", "extracting"),
            c.UploadConfig, f"{J}.upload:run",
            description="A batch of uploaded files, one extraction each", resource_type="asset",
            has_child_jobs=True, completed_toast="Upload of {name} finished",
        ),
        JobType(
            "sharepoint_sync", "SharePoint Sync", "folder-sync", "purple", "sync", 3600,
            ("scanning", "syncing", "extracting", "detecting_deletions"),
            c.SharePointSyncConfig, f"{J}.sharepoint:run",
            description="Microsoft Graph drive listing, changed files, deletions",
            resource_type="sharepoint_config", resource_id_field="sync_config_id", has_child_jobs=True,
            retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=60),
            resource_link=_link("SharePoint Sync", "folder-sync", "purple", "syncs", "sync_config_id"),
            aliases=("sharepoint_import",), check_config="backend.connectors.connections:check_sharepoint",
        ),
        JobType(
            "sam_pull", "SAM.gov Pull", "landmark", "amber", "sync", 3600, ("fetching", "downloading", "extracting"),
            c.SamPullConfig, f"{J}.sam:pull",
            description="Opportunities from the SAM.gov API, with attachments",
            resource_type="sam_search", resource_id_field="search_id", has_child_jobs=True,
            retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=60),
            resource_link=_link("SAM.gov Search", "landmark", "amber", "sam", "search_id"),
            check_config="backend.connectors.connections:check_sam",
        ),
        JobType(
            "sam_refresh", "SAM.gov Refresh", "refresh-cw", "orange", "sync", 1800,
            ("fetching", "downloading", "extracting"),
            c.SamRefreshConfig, f"{J}.sam:refresh",
            description="Refresh known opportunities", resource_type="sam_search", resource_id_field="search_id",
            has_child_jobs=True, check_config="backend.connectors.connections:check_sam",
            resource_link=_link("SAM.gov Search", "landmark", "amber", "sam", "search_id"),
        ),
        JobType(
            "scrape", "Web Scrape", "globe", "teal", "scrape", 1800, ("crawling", "extracting"),
            c.ScrapeConfig, f"{J}.scrape:run",
            description="Same-site crawl from a start URL", resource_type="collection",
            resource_id_field="collection_id",
            resource_link=_link("Collection", "library", "teal", "collections", "collection_id"),
        ),
        JobType(
            "salesforce_import", "Salesforce Import", "cloud", "sky", "import", 1800,
            ("parsing", "importing", "indexing"),
            c.SalesforceImportConfig, f"{J}.salesforce:run",
            description="A Salesforce export (zip of CSVs)", resource_type="asset", resource_id_field="asset_id",
            resource_link=_link("Export file", "file-archive", "sky", "assets", "asset_id"),
        ),
        JobType(
            "forecast_sync", "Forecast Sync", "trending-up", "green", "sync", 1800, ("fetching", "parsing", "indexing"),
            c.ForecastSyncConfig, f"{J}.forecast:run",
            description="Acquisition forecasts from a JSON API", resource_type="forecast_sync",
            resource_id_field="forecast_sync_id", retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=60),
            resource_link=_link("Forecast Sync", "trending-up", "green", "forecasts", "forecast_sync_id"),
            check_config="backend.connectors.connections:check_forecast",
        ),
        JobType(
            "procedure", "Procedure", "list-checks", "iris", "default", 1800, (),
            c.ProcedureConfig, f"{J}.procedure:run",
            description="A named sequence of steps", resource_type="procedure", resource_id_field="procedure",
        ),
        JobType(
            "pipeline", "Pipeline", "workflow", "violet", "default", 7200, (),
            c.PipelineConfig, f"{J}.pipeline:run",
            description="A sequence of job types run as child runs", resource_type="pipeline",
            resource_id_field="name", has_child_jobs=True, cancel_cascade="all",
        ),
        JobType(
            "deletion", "Deletion", "trash-2", "red", "default", 900, ("preparing", "deleting", "cleaning_up"),
            c.DeletionConfig, f"{J}.deletion:run",
            description="Removes a resource and what hangs on it", resource_id_field="resource_id",
            capabilities=Capabilities(retry=True),
        ),
        JobType(
            "system_maintenance", "System Maintenance", "wrench", "gray", "maintenance", 1800, (),
            c.SystemMaintenanceConfig, f"{J}.maintenance:run",
            description="Retention, stale-run recovery, orphans, health report", default_priority=1,
            system_only=True,  # it reads and deletes across organizations: system admins only, no tenant's run
        ),
    ]


@dataclass
class Registry:
    queues: dict[str, QueueDef] = field(default_factory=dict)
    types: dict[str, JobType] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    # What the overrides changed: {"queues" | "job_types": {name: {field: (built-in value, value now)}}}
    overridden: dict[str, dict[str, dict[str, tuple[Any, Any]]]] = field(default_factory=dict)
    overrides_source: str = ""  # the file they came from (CURATORE_REGISTRY_OVERRIDES)
    sources: dict[str, str] = field(default_factory=dict)  # type key -> the CURATORE_JOB_MODULES module adding it

    def add_queue(self, queue: QueueDef) -> None:
        self.queues[queue.name] = queue

    def register(self, job_type: JobType) -> JobType:
        if job_type.queue not in self.queues:
            raise ValueError(f"job type {job_type.key!r} names unknown queue {job_type.queue!r}")
        if self.aliases.get(job_type.key, job_type.key) != job_type.key:
            raise ValueError(f"job type {job_type.key!r} is already an alias of {self.aliases[job_type.key]!r}")
        for alias in job_type.aliases:
            owner = self.aliases.get(alias, alias if alias in self.types else None)
            if owner is not None and owner != job_type.key:
                raise ValueError(f"alias {alias!r} of {job_type.key!r} is already taken by {owner!r}")
        self.types[job_type.key] = job_type
        for alias in job_type.aliases:
            self.aliases[alias] = job_type.key
        return job_type

    def unregister(self, key: str) -> None:
        job_type = self.types.pop(key, None)
        if job_type:
            for alias in job_type.aliases:
                self.aliases.pop(alias, None)

    def resolve(self, run_type: str) -> JobType:
        key = self.aliases.get(run_type, run_type)
        try:
            return self.types[key]
        except KeyError:
            known = ", ".join(sorted(self.types))
            raise UnknownRunType(f"Unknown run type {run_type!r}. Known types: {known}.", run_type=run_type) from None

    def find(self, run_type: str) -> JobType | None:
        return self.types.get(self.aliases.get(run_type, run_type))

    def validate_config(self, run_type: str, config: Any, organization_id: Any = None) -> dict[str, Any]:
        """The config, validated against the type's model (and, given the organization, the type's
        ``check_config``); raises InvalidConfig naming the field. Before pydantic sees it, the config passes
        :func:`backend.validation.check_input` (storable text, finite numbers, size and depth limits)."""
        job_type = self.resolve(run_type)
        if not isinstance(config, dict):
            raise InvalidConfig(f"The config of a {job_type.key} run must be a JSON object.")
        check_input(config, "config", max_bytes=MAX_CONFIG_BYTES)
        return self._validated(job_type, config, organization_id, owner=job_type.key, where="config")

    def _validated(self, job_type: JobType, config: dict[str, Any], organization_id: Any, *, owner: str,
                   where: str) -> dict[str, Any]:
        """The config through the type's model, then each run config nested in it (a pipeline's stages, as
        the model's ``nested_runs()`` lists them) through its own type's model and check: errors name the
        whole path from the submitted config, such as ``config.stages.0.config.asset_id``."""
        try:
            model = job_type.config_model.model_validate(config)
        except ValidationError as exc:
            raise InvalidConfig(_describe(owner, exc, where), errors=exc.errors(include_url=False)) from None
        nested = getattr(model, "nested_runs", None)
        for path, run_type, stage_config in nested() if nested else ():
            stage_where = ".".join([where, *(str(p) for p in path)])
            child = self.find(run_type)
            if child is None:
                raise InvalidConfig(f"Invalid config for {owner}: {stage_where}.run_type: unknown run type "
                                    f"{run_type!r}. Known types: {', '.join(sorted(self.types))}.")
            if child.key == job_type.key:
                raise InvalidConfig(f"Invalid config for {owner}: {stage_where}.run_type: a {job_type.key} cannot "
                                    f"run a {job_type.key} as a stage.")
            self._validated(child, stage_config, organization_id, owner=owner, where=f"{stage_where}.config")
        clean = model.model_dump(mode="json")
        check = job_type.load_check_config() if organization_id is not None else None
        if check is not None:
            check(clean, organization_id)
        return clean

    def apply_overrides(self, overrides: dict[str, Any]) -> None:
        """Apply limits from the overrides file: ``{"queues": {name: {...}}, "job_types": {key: {...}}}``.

        Unknown names, fields or values are refused with a message naming them.
        """
        try:
            parsed = Overrides.model_validate(overrides)
        except ValidationError as exc:
            raise CuratoreError("Invalid registry overrides: " + _describe_errors(exc)) from None
        changed: dict[str, dict[str, dict[str, tuple[Any, Any]]]] = {"queues": {}, "job_types": {}}
        for name, values in parsed.queues.items():
            if name not in self.queues:
                raise CuratoreError(f"Registry overrides name unknown queue {name!r}; known: {sorted(self.queues)}.")
            fields = values.model_dump(exclude_none=True)
            changed["queues"][name] = {f: (getattr(self.queues[name], f), v) for f, v in fields.items()}
            self.queues[name] = replace(self.queues[name], **fields)
        for key, values in parsed.job_types.items():
            if key not in self.types:
                raise CuratoreError(f"Registry overrides name unknown job type {key!r}; known: {sorted(self.types)}.")
            fields = values.model_dump(exclude_none=True)
            if "queue" in fields and fields["queue"] not in self.queues:
                raise CuratoreError(f"Registry overrides move {key!r} to unknown queue {fields['queue']!r}.")
            changed["job_types"][key] = {f: (getattr(self.types[key], f), v) for f, v in fields.items()}
            self.types[key] = replace(self.types[key], **fields)
        self.overrides = overrides
        self.overridden = changed

    def celery_queues(self) -> list[str]:
        return sorted(self.queues)


class QueueOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    label: str | None = None


class JobTypeOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_seconds: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    default_priority: int | None = Field(default=None, ge=0, le=4)
    queue: str | None = None


class Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queues: dict[str, QueueOverride] = Field(default_factory=dict)
    job_types: dict[str, JobTypeOverride] = Field(default_factory=dict)


def _describe_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


def _describe(key: str, exc: ValidationError, where: str = "config") -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return f"Invalid config for {key}: " + "; ".join(parts)


_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry()
        _build(_registry)
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None


def _build(registry: Registry) -> None:
    for queue in BUILTIN_QUEUES:
        registry.add_queue(queue)
    for job_type in builtin_types():
        registry.register(job_type)
    settings = get_settings()
    for module in settings.job_modules:
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            raise CuratoreError(f"CURATORE_JOB_MODULES names {module!r}, which cannot be imported: {exc}") from exc
        for job_type in getattr(imported, "JOB_TYPES", ()):  # the module lists its types (read on every build)
            registry.register(job_type)
            registry.sources[job_type.key] = module
    if settings.registry_overrides:  # after the job modules: their types' limits can be overridden too
        registry.apply_overrides(_read_overrides(settings.registry_overrides))
        registry.overrides_source = str(settings.registry_overrides)


def _read_overrides(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CuratoreError(f"Cannot read the registry overrides file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CuratoreError(f"The registry overrides file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CuratoreError(f"The registry overrides file {path} must hold a JSON object.")
    return data


def register(job_type: JobType) -> JobType:
    """Add a job type at run time. A module listed in ``CURATORE_JOB_MODULES`` should instead define
    ``JOB_TYPES = [JobType(...), ...]``, which every process reads when it builds its registry."""
    return get_registry().register(job_type)
