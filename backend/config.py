"""Settings from the environment, in one place.

Every value is read from a ``CURATORE_``-prefixed variable. Nothing else in the
engine calls ``os.getenv``; it asks :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEV_SECRET = "dev-insecure-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CURATORE_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    data_dir: Path = PROJECT_ROOT / "var"
    database_url: str = ""
    broker_url: str = ""
    redis_url: str | None = None
    # Prefix of every broker key in Redis, so several deployments (or test runs) can share one Redis.
    broker_key_prefix: str = ""
    secret_key: str = DEV_SECRET

    # Extra modules imported by workers, the API and the UI: they may register job types.
    job_modules: list[str] = Field(default_factory=list)
    # A JSON file overriding registry limits (queue concurrency, timeouts).
    registry_overrides: Path | None = None

    heartbeat_seconds: float = 5.0
    # A running run's lease; a run whose lease expires is stale, then re-queued or timed out.
    lease_seconds: float = 30.0
    # How long a cooperative cancel may take before the run's process is killed.
    cancel_grace_seconds: float = 10.0
    # A submitted run that no worker started within this time goes back to the queue.
    start_timeout_seconds: float = 300.0
    # How often each worker node sweeps for expired leases and dispatches pending runs.
    sweep_seconds: float = 5.0
    # Boosts per organization per minute.
    boosts_per_minute: int = 10
    # Finished runs and their logs older than this are removed by the retention maintenance job.
    retention_days: int = 30
    # The live bridge reads the outbox at least this often (Redis wake-ups make it immediate).
    live_poll_seconds: float = 0.5
    progress_min_interval: float = 0.25
    broker_publish_retries: int = 2
    default_org_slug: str = "demo"
    allow_private_fetch: bool = False

    # Outbound fetch and import limits.
    # The most bytes one outbound response may have (after decompression); a larger one is refused
    # while it streams, unread. A caller may pass a smaller limit (the scraper: 5 MiB per page).
    fetch_max_bytes: int = Field(default=100 * 2**20, gt=0)
    # A Salesforce export's CSV files, counted as they unpack: per file, for the whole archive, and how
    # many times its compressed size one file may expand to (zip bombs).
    import_max_file_bytes: int = Field(default=200 * 2**20, gt=0)
    import_max_total_bytes: int = Field(default=2**30, gt=0)
    import_max_ratio: int = Field(default=100, gt=0)

    # Connector credentials and defaults.
    sharepoint_token: str | None = None  # bearer token for Microsoft Graph
    sam_api_key: str | None = None  # SAM.gov API key
    forecast_base_url: str | None = None  # the forecast API when a forecast_sync config names none
    # `curatore dev` serves local stand-ins of those services (and a small website) from this port up;
    # the sample jobs use them.
    demo_servers_port: int | None = None

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'curatore.db'}"
        if not self.broker_url:
            self.broker_url = f"curatore-sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.env == "prod" and self.secret_key == DEV_SECRET:
            raise ValueError("CURATORE_SECRET_KEY must be set to a real secret when CURATORE_ENV=prod")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / "assets"

    def ensure_dirs(self) -> None:
        """The data folder and the assets folder, readable by the server's user only (0700)."""
        for folder in (self.data_dir, self.assets_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
