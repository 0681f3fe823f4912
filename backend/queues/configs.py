"""Per-type job configuration schemas. A run whose config does not validate is never written."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl


class JobConfig(BaseModel):
    """Base of every job config: unknown fields are refused, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


class ExtractionConfig(JobConfig):
    asset_id: uuid.UUID
    force: bool = False


class UploadConfig(JobConfig):
    asset_ids: list[uuid.UUID] = Field(min_length=1)


class SharePointSyncConfig(JobConfig):
    sync_config_id: str = Field(min_length=1)
    drive_id: str = Field(min_length=1)
    base_url: HttpUrl | None = None
    folder_path: str = "/"
    full_resync: bool = False


class SamPullConfig(JobConfig):
    search_id: str = Field(min_length=1)
    query: str = ""
    naics: list[str] = Field(default_factory=list)
    posted_from: date | None = None
    posted_to: date | None = None
    max_pages: int = Field(default=5, ge=1, le=100)
    download_attachments: bool = True
    base_url: HttpUrl | None = None


class SamRefreshConfig(JobConfig):
    search_id: str = Field(min_length=1)
    notice_ids: list[str] = Field(min_length=1)
    base_url: HttpUrl | None = None


class ScrapeConfig(JobConfig):
    start_url: HttpUrl
    collection_id: str | None = None
    max_depth: int = Field(default=2, ge=0, le=10)
    max_pages: int = Field(default=50, ge=1, le=10_000)
    respect_robots: bool = True


class SalesforceImportConfig(JobConfig):
    asset_id: uuid.UUID


class ForecastSyncConfig(JobConfig):
    forecast_sync_id: str = Field(min_length=1)
    source: str = Field(default="default", min_length=1)
    base_url: HttpUrl | None = None


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


class DeletionConfig(JobConfig):
    resource_type: Literal["asset", "run", "collection", "sharepoint_config", "sam_search"]
    resource_id: str = Field(min_length=1)


class SystemMaintenanceConfig(JobConfig):
    handlers: list[Literal["retention", "stale_runs", "orphans", "health"]] = Field(
        default_factory=lambda: ["stale_runs", "orphans", "health"], min_length=1
    )
    retention_days: int | None = Field(default=None, ge=1)
