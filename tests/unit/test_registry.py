"""The job-type registry: the seed's types, aliases, config validation, overrides, public shape, links."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from backend.config import reset_settings
from backend.errors import CuratoreError, InvalidConfig, UnknownRunType
from backend.jobtypes import registry as reg
from backend.jobtypes.configs import JobConfig
from backend.jobtypes.registry import BUILTIN_QUEUES, JobType, RelatedResource, get_registry, register, reset_registry

SEED_TYPES = {
    # key: (queue, phases) — phases as in SPEC 2.2; () where they are per step, stage or handler
    "extraction": ("extraction", ("extracting", "indexing")),
    "upload": ("import", ("uploading", "extracting")),
    "sharepoint_sync": ("sync", ("scanning", "syncing", "extracting", "detecting_deletions")),
    "sam_pull": ("sync", ("fetching", "downloading", "extracting")),
    "sam_refresh": ("sync", ("fetching", "downloading", "extracting")),
    "scrape": ("scrape", ("crawling", "extracting")),
    "salesforce_import": ("import", ("parsing", "importing", "indexing")),
    "forecast_sync": ("sync", ("fetching", "parsing", "indexing")),
    "procedure": ("default", ()),
    "pipeline": ("default", ()),
    "deletion": ("default", ("preparing", "deleting", "cleaning_up")),
    "system_maintenance": ("maintenance", ()),
}

ASSET = str(uuid.UUID(int=1))
VALID_CONFIGS = {
    "extraction": {"asset_id": ASSET},
    "upload": {"asset_ids": [ASSET]},
    "sharepoint_sync": {"sync_config_id": "sp-1", "drive_id": "drive-1"},
    "sam_pull": {"search_id": "s-1"},
    "sam_refresh": {"search_id": "s-1", "notice_ids": ["n-1"]},
    "scrape": {"start_url": "https://example.org/"},
    "salesforce_import": {"asset_id": ASSET},
    "forecast_sync": {"forecast_sync_id": "f-1"},
    "procedure": {"procedure": "nightly"},
    "pipeline": {"stages": [{"run_type": "extraction", "config": {"asset_id": ASSET}}]},
    "deletion": {"resource_type": "asset", "resource_id": ASSET},
    "system_maintenance": {},
}

RADIX_COLORS = {
    "gray", "mauve", "slate", "sage", "olive", "sand", "tomato", "red", "ruby", "crimson", "pink", "plum", "purple",
    "violet", "iris", "indigo", "blue", "cyan", "teal", "jade", "green", "grass", "bronze", "gold", "brown", "orange",
    "amber", "yellow", "lime", "mint", "sky",
}


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Every test starts from the built-in registry and leaves no trace (overrides, custom types)."""
    monkeypatch.delenv("CURATORE_REGISTRY_OVERRIDES", raising=False)
    monkeypatch.delenv("CURATORE_JOB_MODULES", raising=False)
    reset_settings()
    reset_registry()
    yield
    reset_settings()
    reset_registry()


@pytest.fixture
def use_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write an overrides file, point CURATORE_REGISTRY_OVERRIDES at it and rebuild the registry."""

    def use(overrides: object) -> Path:
        path = tmp_path / "overrides.json"
        path.write_text(json.dumps(overrides))
        monkeypatch.setenv("CURATORE_REGISTRY_OVERRIDES", str(path))
        reset_settings()
        reset_registry()
        return path

    return use


# --------------------------------------------------------------------------- the seed's job types


def test_all_twelve_seed_types_are_registered():
    assert set(get_registry().types) == set(SEED_TYPES)


@pytest.mark.parametrize("key", sorted(SEED_TYPES))
def test_seed_type_shape(key):
    queue, phases = SEED_TYPES[key]
    job_type = get_registry().resolve(key)
    assert job_type.key == key
    assert job_type.queue == queue
    assert job_type.queue in get_registry().queues
    assert job_type.phases == phases
    assert job_type.label and job_type.label[0].isupper()
    assert job_type.description
    assert job_type.color in RADIX_COLORS
    assert 60 <= job_type.timeout_seconds <= 24 * 3600
    assert 0 <= job_type.default_priority <= 4
    assert job_type.task_name == f"curatore.jobs.{key}"
    assert issubclass(job_type.config_model, JobConfig)
    assert isinstance(job_type.executor, str) and job_type.executor.startswith("backend.worker.jobs.")


def test_icons_are_lucide_names_reflex_knows():
    from reflex.components.lucide.icon import LUCIDE_ICON_LIST
    from reflex.utils.format import to_snake_case

    unknown = {t.key: t.icon for t in get_registry().types.values() if to_snake_case(t.icon) not in LUCIDE_ICON_LIST}
    assert unknown == {}


def test_labels_are_unique():
    labels = [t.label for t in get_registry().types.values()]
    assert len(labels) == len(set(labels))


def test_queues():
    registry = get_registry()
    assert set(registry.queues) == {q.name for q in BUILTIN_QUEUES}
    assert registry.celery_queues() == sorted(registry.queues)
    assert all(q.max_concurrency >= 1 for q in registry.queues.values())


def test_types_that_spawn_children():
    spawning = {t.key for t in get_registry().types.values() if t.has_child_jobs}
    assert {"upload", "sharepoint_sync", "sam_pull", "sam_refresh", "pipeline"} <= spawning
    assert "extraction" not in spawning and "scrape" not in spawning  # a scrape extracts its pages itself
    assert get_registry().resolve("pipeline").cancel_cascade == "all"


def test_toasts():
    extraction = get_registry().resolve("extraction")
    assert extraction.toast("completed", name="a.pdf") == "Extracted a.pdf"
    assert extraction.toast("failed", name="a.pdf", error="boom") == "Extraction of a.pdf failed: boom"
    assert extraction.toast("failed", name=None) == "Extraction of Extraction failed: unknown error"
    procedure = get_registry().resolve("procedure")
    assert procedure.toast("completed", name="x") == "Procedure completed"


# --------------------------------------------------------------------------- aliases and unknown types


@pytest.mark.parametrize(
    ("alias", "key"),
    [("extraction_enhancement", "extraction"), ("sharepoint_import", "sharepoint_sync"),
     ("document_extraction", "extraction")],
)
def test_aliases_resolve(alias, key):
    registry = get_registry()
    assert registry.resolve(alias) is registry.resolve(key)
    assert registry.find(alias) is registry.resolve(key)
    assert alias in registry.resolve(key).aliases


def test_unknown_type_lists_known_types():
    with pytest.raises(UnknownRunType) as caught:
        get_registry().resolve("extraktion")
    message = caught.value.message
    assert message.startswith("Unknown run type 'extraktion'. Known types: ")
    for key in SEED_TYPES:
        assert key in message
    assert caught.value.details == {"run_type": "extraktion"}
    assert caught.value.code == "unknown_run_type"
    assert get_registry().find("extraktion") is None


def test_validate_config_of_an_unknown_type_raises_unknown_run_type():
    with pytest.raises(UnknownRunType):
        get_registry().validate_config("nope", {})


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("key", sorted(VALID_CONFIGS))
def test_a_valid_config_of_every_type(key):
    validated = get_registry().validate_config(key, VALID_CONFIGS[key])
    json.dumps(validated)  # what is stored on the run is plain JSON
    assert get_registry().validate_config(key, validated) == validated  # and validates again


def test_validation_fills_defaults_and_normalizes():
    validated = get_registry().validate_config("extraction_enhancement", {"asset_id": ASSET.upper()})
    assert validated == {"asset_id": ASSET, "force": False}
    sam = get_registry().validate_config("sam_pull", {"search_id": "s", "posted_from": "2024-01-31"})
    assert sam["posted_from"] == "2024-01-31" and sam["max_pages"] == 5


@pytest.mark.parametrize(
    ("key", "config", "expected"),
    [
        ("extraction", {}, "config.asset_id: Field required"),
        ("extraction", {"asset_id": "not-a-uuid"}, "config.asset_id: Input should be a valid UUID"),
        ("extraction", {"asset_id": ASSET, "force": "maybe"}, "config.force: Input should be a valid boolean"),
        ("extraction", {"asset_id": ASSET, "asset": "x"}, "config.asset: Extra inputs are not permitted"),
        ("upload", {"asset_ids": []}, "config.asset_ids: List should have at least 1 item"),
        ("scrape", {"start_url": "not a url"}, "config.start_url: Input should be a valid URL"),
        ("scrape", {"start_url": "https://a.example", "max_depth": 99}, "config.max_depth: Input should be less"),
        ("sam_pull", {"search_id": "s", "max_pages": "many"}, "config.max_pages: Input should be a valid integer"),
        ("pipeline", {"stages": [{"config": {}}]}, "config.stages.0.run_type: Field required"),
        ("deletion", {"resource_type": "planet", "resource_id": "x"}, "config.resource_type: Input should be"),
        ("system_maintenance", {"handlers": ["vacuum"]}, "config.handlers.0: Input should be"),
    ],
)
def test_invalid_config_names_the_field(key, config, expected):
    with pytest.raises(InvalidConfig) as caught:
        get_registry().validate_config(key, config)
    message = caught.value.message
    assert message.startswith(f"Invalid config for {key}: ")
    assert expected in message
    assert caught.value.code == "invalid_config"
    assert caught.value.details["errors"]  # the structured errors, for the API


def test_invalid_config_reports_every_bad_field():
    with pytest.raises(InvalidConfig) as caught:
        get_registry().validate_config("sharepoint_sync", {"drive_id": 5, "typo": True})
    message = caught.value.message
    for part in ("config.sync_config_id: Field required", "config.drive_id: Input should be a valid string",
                 "config.typo: Extra inputs are not permitted"):
        assert part in message


@pytest.mark.parametrize("config", [[], "x", None, 3])
def test_config_must_be_an_object(config):
    with pytest.raises(InvalidConfig, match=r"^The config of a extraction run must be a JSON object\.$"):
        get_registry().validate_config("extraction_enhancement", config)


# --------------------------------------------------------------------------- overrides


def test_overrides_change_queue_concurrency_and_timeouts(use_overrides):
    use_overrides({
        "queues": {"extraction": {"max_concurrency": 9}, "sync": {"label": "Connectors"}},
        "job_types": {"extraction": {"timeout_seconds": 42, "max_concurrency": 3},
                      "scrape": {"default_priority": 4, "queue": "default"}},
    })
    registry = get_registry()
    assert registry.queues["extraction"].max_concurrency == 9
    assert registry.queues["sync"].label == "Connectors"
    assert registry.queues["sync"].max_concurrency == 2  # untouched fields keep their values
    extraction = registry.resolve("extraction_enhancement")  # aliases see the overridden type
    assert (extraction.timeout_seconds, extraction.max_concurrency) == (42, 3)
    assert extraction.public()["timeout_seconds"] == 42
    assert extraction.phases == ("extracting", "indexing")
    scrape = registry.resolve("scrape")
    assert (scrape.default_priority, scrape.queue) == (4, "default")
    assert registry.resolve("upload").timeout_seconds == 900  # other types untouched
    assert registry.overrides["queues"]["extraction"] == {"max_concurrency": 9}


def test_the_registry_records_what_the_overrides_changed_and_where_they_came_from(use_overrides):
    """The queue page shows each changed value beside its built-in one, and the file they came from."""
    path = use_overrides({"queues": {"extraction": {"max_concurrency": 9}},
                          "job_types": {"scrape": {"timeout_seconds": 900, "queue": "default"}}})
    registry = get_registry()
    assert registry.overridden == {"queues": {"extraction": {"max_concurrency": (4, 9)}},
                                   "job_types": {"scrape": {"timeout_seconds": (1800, 900),
                                                            "queue": ("scrape", "default")}}}
    assert registry.overrides_source == str(path)
    assert "extraction" not in registry.sources  # built in


def test_without_an_overrides_file_nothing_is_recorded_as_overridden(monkeypatch):
    monkeypatch.delenv("CURATORE_REGISTRY_OVERRIDES", raising=False)
    reset_settings()
    reset_registry()
    registry = get_registry()
    assert (registry.overridden, registry.overrides_source) == ({}, "")


def test_without_overrides_the_builtin_limits_apply(use_overrides):
    use_overrides({"job_types": {"extraction": {"timeout_seconds": 42}}})
    assert get_registry().resolve("extraction").timeout_seconds == 42
    reset_registry()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CURATORE_REGISTRY_OVERRIDES")
        reset_settings()
        assert get_registry().resolve("extraction").timeout_seconds == 600


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"job_types": {"extraction": {"timeout": 5}}}, "timeout"),
        ({"job_types": {"extraction": {"phases": ["x"]}}}, "phases"),
        ({"queues": {"extraction": {"concurrency": 5}}}, "concurrency"),
        ({"queues": {"extraction": {"name": "other"}}}, "name"),
    ],
)
def test_overrides_reject_unknown_fields(use_overrides, overrides, field):
    use_overrides(overrides)
    with pytest.raises(CuratoreError, match=rf"Invalid registry overrides: .*{field}: Extra inputs are not permitted"):
        get_registry()

def test_overrides_reject_unknown_names(use_overrides):
    use_overrides({"job_types": {"extractoin": {"timeout_seconds": 5}}})
    with pytest.raises(Exception, match="extractoin"):
        get_registry()



def test_overrides_reject_an_unknown_queue(use_overrides):
    use_overrides({"job_types": {"extraction": {"queue": "nowhere"}}})
    with pytest.raises(Exception, match="nowhere"):
        get_registry()



def test_overrides_reject_values_of_the_wrong_type(use_overrides):
    use_overrides({"job_types": {"extraction": {"timeout_seconds": "ten"}}})
    with pytest.raises(Exception, match="timeout_seconds"):
        get_registry()


# --------------------------------------------------------------------------- public shape and links


@pytest.mark.parametrize("key", sorted(SEED_TYPES))
def test_public_is_json_serializable(key):
    public = get_registry().resolve(key).public()
    again = json.loads(json.dumps(public))
    assert again == public
    assert again["key"] == key
    assert {"label", "icon", "color", "queue", "timeout_seconds", "max_concurrency", "phases", "capabilities",
            "resource_type", "has_child_jobs", "aliases", "config_schema"} <= set(again)
    assert set(again["capabilities"]) == {"cancel", "retry", "throttle", "boost"}
    schema = again["config_schema"]
    assert schema["type"] == "object" and schema.get("additionalProperties") is False


def test_every_public_shape_at_once_is_json():
    json.dumps([t.public() for t in get_registry().types.values()])


LINKED = {
    "extraction": ("asset_id", "assets", "Asset"),
    "salesforce_import": ("asset_id", "assets", "Export file"),
    "sharepoint_sync": ("sync_config_id", "syncs", "SharePoint Sync"),
    "sam_pull": ("search_id", "sam", "SAM.gov Search"),
    "sam_refresh": ("search_id", "sam", "SAM.gov Search"),
    "scrape": ("collection_id", "collections", "Collection"),
    "forecast_sync": ("forecast_sync_id", "forecasts", "Forecast Sync"),
}


@pytest.mark.parametrize("key", sorted(LINKED))
def test_resource_links_build_hrefs(key):
    field_name, path, label = LINKED[key]
    job_type = get_registry().resolve(key)
    link = job_type.resource_link({field_name: "r-42"}, "acme")
    assert isinstance(link, RelatedResource)
    assert link.href == f"/orgs/acme/{path}/r-42"
    assert (link.label, link.name) == (label, "r-42")
    assert link.icon and link.color in RADIX_COLORS
    assert job_type.resource_link({}, "acme") is None  # no resource named in the config: no link
    assert job_type.resource_id_from({field_name: "r-42"}) == "r-42"
    assert job_type.resource_id_from({}) is None


def test_types_without_links():
    linked = {t.key for t in get_registry().types.values() if t.resource_link}
    assert linked == set(LINKED)


def test_resource_id_from_a_uuid_is_a_string():
    value = uuid.UUID(int=7)
    assert get_registry().resolve("extraction").resource_id_from({"asset_id": value}) == str(value)


# --------------------------------------------------------------------------- custom job types


class _EchoConfig(JobConfig):
    words: list[str]


def _echo(ctx, config: _EchoConfig) -> dict[str, object]:  # noqa: ANN001
    return {"echoed": len(config.words)}


def _custom(**changes: object) -> JobType:
    values: dict[str, object] = dict(
        key="test_echo", label="Echo", icon="megaphone", color="pink", queue="default", timeout_seconds=60,
        phases=("echoing",), config_model=_EchoConfig, executor=_echo, aliases=("echo", "legacy_echo"),
    )
    values.update(changes)
    return JobType(**values)  # type: ignore[arg-type]


def test_register_a_custom_type_and_unregister_it():
    registry = get_registry()
    job_type = register(_custom())
    assert registry.resolve("test_echo") is job_type
    assert registry.resolve("legacy_echo") is job_type
    assert registry.validate_config("echo", {"words": ["a", "b"]}) == {"words": ["a", "b"]}
    with pytest.raises(InvalidConfig, match=r"config\.words: Input should be a valid list"):
        registry.validate_config("echo", {"words": "a b"})
    assert job_type.load_executor()(None, _EchoConfig(words=["x"])) == {"echoed": 1}
    json.dumps(job_type.public())

    registry.unregister("test_echo")
    assert "echo" not in registry.aliases and "legacy_echo" not in registry.aliases
    for name in ("test_echo", "echo", "legacy_echo"):
        with pytest.raises(UnknownRunType):
            registry.resolve(name)
    assert set(registry.types) == set(SEED_TYPES)
    registry.unregister("test_echo")  # a second time does nothing


def test_string_executor_is_imported():
    job_type = register(_custom(executor=f"{__name__}:_echo", aliases=()))
    assert job_type.load_executor() is _echo
    assert get_registry().resolve("extraction").load_executor().__name__ == "run"


def test_registering_on_an_unknown_queue_fails():
    with pytest.raises(ValueError, match="unknown queue 'nowhere'"):
        register(_custom(queue="nowhere"))
    assert "test_echo" not in get_registry().types


def test_a_custom_type_is_gone_after_reset():
    register(_custom())
    reset_registry()
    assert get_registry().find("test_echo") is None


def test_job_modules_setting_imports_plugin_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module listed in CURATORE_JOB_MODULES registers its types when the registry is built."""
    import sys

    name = f"curatore_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from backend.jobtypes.registry import register\n"
        "from tests.unit.test_registry import _custom\n"
        "register(_custom())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CURATORE_JOB_MODULES", json.dumps([name]))
    reset_settings()
    reset_registry()
    try:
        assert get_registry().resolve("echo").key == "test_echo"
        assert set(get_registry().types) == {*SEED_TYPES, "test_echo"}
    finally:
        sys.modules.pop(name, None)


def test_config_models_are_pydantic():
    assert all(issubclass(t.config_model, BaseModel) for t in reg.get_registry().types.values())



def test_an_alias_cannot_take_over_another_type():
    with pytest.raises(ValueError, match="extraction"):
        register(_custom(aliases=("extraction",)))
    assert get_registry().resolve("extraction").key == "extraction"
