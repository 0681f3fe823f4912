"""Settings from the environment, in one place.

Every value is read from a ``CURATORE_``-prefixed variable. Nothing else in the
engine calls ``os.getenv``; it asks :func:`get_settings`.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.errors import InvalidSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEV_SECRET = "dev-insecure-secret-change-me"
MIN_SECRET_LENGTH = 32
DEV_PUBLIC_URLS = ("http://localhost:3000", "http://127.0.0.1:3000")

# --------------------------------------------------------------------------- connections
GRAPH_URL = "https://graph.microsoft.com/v1.0"
SAM_URL = "https://api.sam.gov"
CONNECTION_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # a connection's name, as job configs and CURATORE_CONNECTIONS say it
CREDENTIAL_FIELD = {"sharepoint": "token", "sam": "api_key", "forecast": None}  # what each kind may carry


class ConnectionSettings(BaseModel):
    """One entry of CURATORE_CONNECTIONS. The credential is a SecretStr: it never shows in a repr or a message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sharepoint", "sam", "forecast"]
    base_url: str
    token: SecretStr | None = None  # sharepoint: the bearer token
    api_key: SecretStr | None = None  # sam: the API key
    organizations: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)  # slugs, or ["*"]: every one

    @model_validator(mode="after")
    def _credential_of_its_kind(self) -> "ConnectionSettings":
        for name in ("token", "api_key"):
            if getattr(self, name) is not None and CREDENTIAL_FIELD[self.kind] != name:
                raise ValueError(f"a {self.kind} connection takes no {name!r}")
        return self


def checked_base_url(url: str, where: str) -> str:
    """The URL without a trailing slash; an InvalidSettings (one line, never echoing the URL, which may hold a
    password) for anything but http(s)://host... without user:password@."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InvalidSettings(f"{where}: the base URL is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSettings(f"{where}: the base URL must be an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidSettings(f"{where}: the base URL must not carry credentials (user:password@); "
                              "put the token or API key in its own setting.")
    return url.rstrip("/")


def _connection(name: Any, entry: Any) -> ConnectionSettings:
    """One CURATORE_CONNECTIONS entry, checked; the error names the field, never the value given."""
    where = f"CURATORE_CONNECTIONS[{name!r}]"
    if not isinstance(name, str) or not re.match(CONNECTION_NAME, name):
        raise InvalidSettings(f"{where}: a connection name is lowercase letters, digits, '-' and '_' "
                              "(at most 63 characters).")
    try:
        connection = ConnectionSettings.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False, include_context=False))
        raise InvalidSettings(f"{where}: {problems}.") from None
    return connection.model_copy(update={"base_url": checked_base_url(connection.base_url, where)})



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
    # Browser sign-in: a session ends this long after sign-in, or after this long without a request, whichever
    # comes first; a locked-out account or address waits login_backoff_seconds, doubling per further failure.
    session_hours: float = Field(default=12.0, gt=0)
    session_idle_minutes: float = Field(default=60.0, gt=0)
    login_backoff_seconds: float = Field(default=30.0, gt=0)

    # Extra modules imported by workers, the API and the UI: they may register job types.
    job_modules: list[str] = Field(default_factory=list)
    # A JSON file overriding registry limits (queue concurrency, timeouts).
    registry_overrides: Path | None = None

    # Connections to PostgreSQL per process (each worker pool process, each UI/API process): kept open, and
    # opened beyond that under load. (processes x (pool + overflow)) must stay under the server's max_connections.
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    heartbeat_seconds: float = 5.0
    # A running run's lease; a run whose lease expires is stale, then re-queued or timed out.
    lease_seconds: float = 30.0
    # How long a cooperative cancel may take before the run's process is killed.
    cancel_grace_seconds: float = 10.0
    # Worker loss is not a job failure: a run whose lease expired (its worker vanished) is re-dispatched up to
    # this many times, apart from its type's retry_policy.max_attempts; past it, the run ends timed_out.
    max_redeliveries: int = Field(default=3, ge=0)
    # A worker told to stop asks its running jobs to hand their runs back at their next check_cancelled();
    # the ones still running this long after are handed back by its main process, and their processes killed.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # A submitted run that no worker started within this time goes back to the queue.
    start_timeout_seconds: float = 300.0
    # A submitted run whose task no live worker holds, this long after it was sent while a worker of its queue
    # had a free slot, lost its message (Redis restarted empty, a worker died holding it): it is sent again.
    lost_message_grace_seconds: float = Field(default=5.0, gt=0)
    # How often each worker node sweeps for expired leases and dispatches pending runs.
    sweep_seconds: float = 5.0
    # Boosts per organization per minute.
    boosts_per_minute: int = 10
    # Finished runs and their logs older than this are removed by the retention maintenance job.
    retention_days: int = 30
    # The live bridge reads the outbox at least this often (Redis wake-ups make it immediate).
    live_poll_seconds: float = 0.5
    # A live list (one organization or all, filters, page) is re-read at most this often, once for every
    # browser watching it.
    live_list_seconds: float = Field(default=0.25, ge=0)
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

    # Connections: where connector jobs send requests and the credentials they carry (a job config only names
    # one). Each kind has a "default" connection built from the variables below, open to every organization;
    # CURATORE_CONNECTIONS adds named ones (JSON: {name: {"kind", "base_url", "token"/"api_key",
    # "organizations"}}), and may replace a kind's default. backend/connectors/connections.py resolves them.
    sharepoint_token: SecretStr | None = None  # bearer token for Microsoft Graph
    sharepoint_base_url: str = GRAPH_URL
    sam_api_key: SecretStr | None = None  # SAM.gov API key
    sam_base_url: str = SAM_URL
    forecast_base_url: str | None = None  # no default forecast connection when unset
    connections: dict[str, ConnectionSettings] = Field(default_factory=dict)
    # `curatore dev` serves local stand-ins of those services (and a small website) from this port up;
    # the sample jobs use them.
    demo_servers_port: int | None = None

    # Web edges. The origins the UI is opened at (the websocket refuses pages of any other origin, besides the
    # server's own host); the dev defaults are `curatore dev --reload`'s frontend.
    public_urls: list[str] = Field(default_factory=lambda: list(DEV_PUBLIC_URLS))
    # Browser origins that may call the API cross-site (CORS); none by default.
    cors_origins: list[str] = Field(default_factory=list)
    # `/metrics`: a scraper sends `Authorization: Bearer <metrics_token>`, or comes from an address in
    # metrics_allow (CIDRs; loopback only by default).
    metrics_token: SecretStr | None = None
    metrics_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    @field_validator("sharepoint_base_url", "sam_base_url", "forecast_base_url")
    @classmethod
    def _safe_base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else checked_base_url(value, f"CURATORE_{(info.field_name or '').upper()}")

    @field_validator("connections", mode="before")
    @classmethod
    def _parse_connections(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise InvalidSettings("CURATORE_CONNECTIONS must be a JSON object: {name: {\"kind\": ..., ...}}.")
        return {name: _connection(name, entry) for name, entry in value.items()}

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'curatore.db'}"
        if not self.broker_url:
            self.broker_url = f"curatore-sqla+sqlite:///{self.data_dir / 'broker.db'}"
        self._check_secret()
        return self

    def _check_secret(self) -> None:
        """In prod, the secret that signs sessions must be a real one: an InvalidSettings (one line, never the
        value) for an empty, short or default one."""
        if self.env != "prod":
            return
        if self.secret_key == DEV_SECRET or len(self.secret_key.strip()) < MIN_SECRET_LENGTH:
            raise InvalidSettings(f"CURATORE_SECRET_KEY must be a random secret of at least {MIN_SECRET_LENGTH} "
                                  "characters when CURATORE_ENV=prod (python -c 'import secrets; "
                                  "print(secrets.token_urlsafe(48))').")

    @field_validator("public_urls", "cors_origins")
    @classmethod
    def _origins(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
                raise InvalidSettings(f"CURATORE_{(info.field_name or '').upper()}: each entry must be an origin "
                                      "such as https://jobs.example.com (scheme and host, no path).")
        return [f"{urlsplit(u).scheme}://{urlsplit(u).netloc}".lower() for u in value]

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        try:
            return [str(ipaddress.ip_network(net, strict=False)) for net in value]
        except ValueError:
            raise InvalidSettings("CURATORE_METRICS_ALLOW: each entry must be an address or a CIDR "
                                  "such as 10.0.0.0/8.") from None

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
