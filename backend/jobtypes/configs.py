"""Per-type job configuration schemas. A run whose config does not validate is never written."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from backend.config import CONNECTION_NAME
from backend.errors import InvalidConfig


class JobConfig(BaseModel):
    """Base of every job config: unknown fields are refused, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


class ExtractionConfig(JobConfig):
    asset_id: uuid.UUID
    force: bool = False


class UploadConfig(JobConfig):
    asset_ids: list[uuid.UUID] = Field(min_length=1)


class ConnectorConfig(JobConfig):
    """A connector's config names a connection configured on the server (SPEC 8.2a): where its requests go
    and the credential they carry are settings, never part of a config."""

    connection: str = Field(default="default", pattern=CONNECTION_NAME,
                            description="A connection configured on the server (see the README, Connections).")

    @model_validator(mode="before")
    @classmethod
    def _no_base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "base_url" in data:  # configs written before connections existed
            raise InvalidConfig("A connector job config cannot carry a base_url: where connectors send requests "
                                "and credentials is a server setting. Configure a connection (CURATORE_CONNECTIONS, "
                                "see the README) and name it in \"connection\".", field="base_url")
        return data


class SharePointSyncConfig(ConnectorConfig):
    sync_config_id: str = Field(min_length=1)
    drive_id: str = Field(min_length=1)
    folder_path: str = "/"
    full_resync: bool = False


class SamPullConfig(ConnectorConfig):
    search_id: str = Field(min_length=1)
    query: str = ""
    naics: list[str] = Field(default_factory=list)
    posted_from: date | None = None
    posted_to: date | None = None
    max_pages: int = Field(default=5, ge=1, le=100)
    download_attachments: bool = True


class SamRefreshConfig(ConnectorConfig):
    search_id: str = Field(min_length=1)
    notice_ids: list[str] = Field(min_length=1)


class ScrapeConfig(JobConfig):
    start_url: HttpUrl
    collection_id: str | None = None
    max_depth: int = Field(default=2, ge=0, le=10)
    max_pages: int = Field(default=50, ge=1, le=10_000)
    respect_robots: bool = True


class SalesforceImportConfig(JobConfig):
    asset_id: uuid.UUID


class ForecastSyncConfig(ConnectorConfig):
    forecast_sync_id: str = Field(min_length=1)
    source: str = Field(default="default", min_length=1)


class ProcedureConfig(JobConfig):
    procedure: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class PipelineStage(JobConfig):
    run_type: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(JobConfig):
    # A named pipeline runs once at a time per organization (duplicate protection); unnamed ones do not wait.
    name: str | None = Field(default=None, min_length=1, max_length=200)
    stages: list[PipelineStage] = Field(min_length=1)

    def nested_runs(self) -> list[tuple[tuple[Any, ...], str, dict[str, Any]]]:
        """(path, run_type, config) of each stage: the registry validates them at submit, against their own
        types (this module cannot import the registry, which imports it), so a bad stage never waits for a
        worker to be refused."""
        return [(("stages", n), stage.run_type, stage.config) for n, stage in enumerate(self.stages)]


class DeletionConfig(JobConfig):
    resource_type: Literal["asset", "run", "collection", "sharepoint_config", "sam_search"]
    resource_id: str = Field(min_length=1)


class SystemMaintenanceConfig(JobConfig):
    handlers: list[Literal["retention", "stale_runs", "orphans", "health"]] = Field(
        default_factory=lambda: ["stale_runs", "orphans", "health"], min_length=1
    )
    retention_days: int | None = Field(default=None, ge=1)
