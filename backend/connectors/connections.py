"""Connections: where a connector job's requests go and the credential they carry (SPEC 8.2a).

A job config only names a connection (``"connection": "default"``); its base URL and its token or API key
are server-side settings (``backend/config.py``): each kind has a ``default`` connection built from
``CURATORE_SHAREPOINT_TOKEN`` / ``CURATORE_SHAREPOINT_BASE_URL``, ``CURATORE_SAM_API_KEY`` /
``CURATORE_SAM_BASE_URL`` and ``CURATORE_FORECAST_BASE_URL`` (open to every organization), and
``CURATORE_CONNECTIONS`` adds named ones, each open to the organizations it lists. The credential is sent only
on requests to the connection's origin (``backend.connectors.common.RunHttpClient``).

The job types call :func:`check_sharepoint` & co. when a run is created (``JobType.check_config``), and the
worker calls :func:`resolve` again when the run starts: a run never carries more than the name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import select

from backend.config import Settings, get_settings
from backend.db.engine import in_transaction
from backend.db.models import Organization
from backend.errors import InvalidConfig

Kind = Literal["sharepoint", "sam", "forecast"]
Origin = tuple[str, str, int]
EVERY_ORGANIZATION = "*"
LABELS = {"sharepoint": "SharePoint", "sam": "SAM.gov", "forecast": "forecast"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> Origin:
    """(scheme, host, port) with the default port filled in: two URLs share an origin when these are equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def show_origin(url: str) -> str:
    """An origin as a person reads it (``https://host:port``), for messages: no path, query or user info."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class Connection:
    kind: Kind
    name: str
    base_url: str
    secret: str | None = field(default=None, repr=False)
    setting: str = "CURATORE_CONNECTIONS"  # where an operator configures its credential (for messages)

    @property
    def origin(self) -> Origin:
        return origin(self.base_url)

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that carry the credential (Microsoft Graph: a bearer token)."""
        return {"Authorization": f"Bearer {self.secret}"} if self.kind == "sharepoint" and self.secret else {}

    @property
    def auth_params(self) -> dict[str, str]:
        """Query parameters that carry the credential (SAM.gov: ``api_key``)."""
        return {"api_key": self.secret} if self.kind == "sam" and self.secret else {}


def resolve(kind: Kind, name: str, organization_id: uuid.UUID | None) -> Connection:
    """The connection ``name`` of ``kind`` if the organization may use it; else InvalidConfig naming those it
    may use (never one it may not, never a credential)."""
    usable = _usable(kind, _slug(organization_id))
    if name in usable:
        return usable[name]
    label = LABELS[kind]
    if usable:
        choice = f"it may use: {', '.join(sorted(usable))}"
    else:
        choice = "it may use none (a system administrator configures connections, see the README)"
    raise InvalidConfig(f"There is no {label} connection {name!r} for this organization; {choice}.",
                        connection=name)


def available(kind: Kind, organization_id: uuid.UUID | None) -> list[str]:
    """The names of the connections of ``kind`` this organization may use, sorted (for pickers)."""
    return sorted(_usable(kind, _slug(organization_id)))


def check_sharepoint(config: dict[str, Any], organization_id: uuid.UUID) -> None:
    resolve("sharepoint", config.get("connection", "default"), organization_id)


def check_sam(config: dict[str, Any], organization_id: uuid.UUID) -> None:
    resolve("sam", config.get("connection", "default"), organization_id)


def check_forecast(config: dict[str, Any], organization_id: uuid.UUID) -> None:
    resolve("forecast", config.get("connection", "default"), organization_id)


def _usable(kind: Kind, slug: str | None) -> dict[str, Connection]:
    settings = get_settings()
    found = {c.name: (c, [EVERY_ORGANIZATION]) for c in _defaults(settings) if c.kind == kind}
    for name, entry in settings.connections.items():
        if entry.kind == kind:
            secret = entry.token or entry.api_key
            found[name] = (Connection(kind, name, entry.base_url, secret.get_secret_value() if secret else None),
                           entry.organizations)
    return {name: c for name, (c, orgs) in found.items() if EVERY_ORGANIZATION in orgs or (slug and slug in orgs)}


def _defaults(settings: Settings) -> list[Connection]:
    """The ``default`` connection of each kind, from the single-service settings."""
    token, key = settings.sharepoint_token, settings.sam_api_key
    defaults = [
        Connection("sharepoint", "default", settings.sharepoint_base_url, token.get_secret_value() if token else None,
                   "CURATORE_SHAREPOINT_TOKEN"),
        Connection("sam", "default", settings.sam_base_url, key.get_secret_value() if key else None,
                   "CURATORE_SAM_API_KEY"),
    ]
    if settings.forecast_base_url:
        defaults.append(Connection("forecast", "default", settings.forecast_base_url, None,
                                   "CURATORE_FORECAST_BASE_URL"))
    return defaults


def _slug(organization_id: uuid.UUID | None) -> str | None:
    if organization_id is None:
        return None
    org_id = uuid.UUID(str(organization_id))
    return in_transaction(lambda s: s.execute(select(Organization.slug).where(Organization.id == org_id))
                          .scalar_one_or_none(), read_only=True)
