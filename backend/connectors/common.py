"""What the connector jobs share: an HTTP client that logs its retries on the run and stops at a
cancel request, redirects followed through the address guard, secrets kept out of messages,
external records upserted, files stored as assets of a collection, and the state a connector
keeps between runs (``ConnectorState``)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backend.connectors.http import FetchFailed, FetchRefused, HttpClient
from backend.db.engine import in_transaction
from backend.db.models import Asset, ConnectorState, ExternalRecord
from backend.db.types import utcnow
from backend.errors import CuratoreError
from backend.storage.assets import store_bytes

if TYPE_CHECKING:
    from backend.worker.base import JobContext


# --------------------------------------------------------------------------- HTTP


def secret_setting(settings: Any, name: str) -> str | None:
    """A credential from the settings (a plain string or a pydantic ``SecretStr``), None when unset."""
    value = getattr(settings, name, None)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return value or None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RunHttpClient(HttpClient):
    """An :class:`HttpClient` for one run: each retry is a WARN ``retry`` line on the run, and a
    cancel request seen while retrying stops the run instead of waiting out the backoff."""

    def __init__(self, ctx: JobContext, base_url: str, label: str, *, secrets: Iterable[str | None] = (),
                 **kwargs: Any) -> None:
        super().__init__(base_url, on_retry=self._retrying, **kwargs)
        self.ctx, self.label, self.secrets = ctx, label, [s for s in secrets if s]
        self._current = ""

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self._current = redact(f"{method} {url}", self.secrets)
        try:
            return super().request(method, url, **kwargs)
        except (FetchFailed, FetchRefused) as exc:  # the URL in the message may carry an API key
            details = {k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in exc.details.items()}
            clean = type(exc)(redact(exc.message, self.secrets), **details)
            clean.retryable = exc.retryable
            raise clean from None

    def get_following(self, url: str, *, headers: dict[str, str] | None = None, max_hops: int = 5) -> httpx.Response:
        """GET, following redirects; every hop goes through the address guard, and headers (a bearer
        token) are not sent on to another origin."""
        for _ in range(max_hops + 1):
            response = self.get(url, headers=headers)
            if not response.is_redirect:
                return response
            target = urljoin(str(response.url), response.headers["Location"])
            if _origin(target) != _origin(str(response.url)):
                headers = None
            url = target
        raise FetchFailed(f"{self.label}: more than {max_hops} redirects from {redact(url, self.secrets)}")

    def _retrying(self, reason: str, attempt: int, delay: float) -> None:
        self.ctx.warn(
            f"{self.label}: {reason} on {self._current}; retrying in {delay:.1f} s "
            f"(attempt {attempt + 1} of {self.max_attempts})",
            "retry", reason=reason, attempt=attempt, delay_seconds=round(delay, 3), request=self._current,
        )
        self.ctx.check_cancelled()


def as_error(cls: type[CuratoreError], message: str, cause: FetchFailed) -> CuratoreError:
    """``cls(message)`` with the failed request's status, retryable (by the type's policy) only when the
    cause was transient (5xx, 429, no answer), not when the service said no (401, 404...)."""
    error = cls(message, status=cause.details.get("status"))
    error.retryable = cause.retryable
    return error


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def filename_from(response: httpx.Response, fallback: str) -> str:
    """The file name a download announces (Content-Disposition), else the URL's last segment."""
    disposition = response.headers.get("Content-Disposition", "")
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition) or re.search(r'filename="?([^";]+)"?', disposition)
    name = unquote(match.group(1)) if match else unquote(urlsplit(str(response.url)).path.rsplit("/", 1)[-1])
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name if name and name not in (".", "..", "download") else fallback


# --------------------------------------------------------------------------- records


def upsert_record(organization_id: uuid.UUID, source: str, kind: str, external_id: str, *, resource_id: str | None,
                  title: str, data: dict[str, Any]) -> bool:
    """Insert or update one external record (a live one again if it had been deleted); True if new."""

    def write(s: Any) -> bool:
        record = s.execute(select(ExternalRecord).where(
            ExternalRecord.organization_id == organization_id, ExternalRecord.source == source,
            ExternalRecord.kind == kind, ExternalRecord.external_id == external_id)).scalar_one_or_none()
        if record is None:
            s.add(ExternalRecord(organization_id=organization_id, source=source, kind=kind, external_id=external_id,
                                 resource_id=resource_id, title=title[:1000], data=data))
            s.flush()
            return True
        record.resource_id, record.title, record.data = resource_id, title[:1000], data
        record.updated_at, record.deleted_at = utcnow(), None
        return False

    try:
        return in_transaction(write)
    except IntegrityError:  # another run inserted it first: now it exists, so this updates it
        return in_transaction(write)


def add_record_assets(organization_id: uuid.UUID, source: str, kind: str, external_id: str,
                      asset_ids: list[str]) -> None:
    def write(s: Any) -> None:
        record = s.execute(select(ExternalRecord).where(
            ExternalRecord.organization_id == organization_id, ExternalRecord.source == source,
            ExternalRecord.kind == kind, ExternalRecord.external_id == external_id)).scalar_one()
        record.asset_ids = list(dict.fromkeys([*record.asset_ids, *asset_ids]))

    in_transaction(write)


def get_record(organization_id: uuid.UUID, source: str, kind: str, external_id: str) -> ExternalRecord | None:
    return in_transaction(lambda s: s.execute(select(ExternalRecord).where(
        ExternalRecord.organization_id == organization_id, ExternalRecord.source == source,
        ExternalRecord.kind == kind, ExternalRecord.external_id == external_id)).scalar_one_or_none())


def retire_records(organization_id: uuid.UUID, source: str, kind: str, resource_id: str, keep: set[str]) -> list[str]:
    """Mark deleted the live records of ``resource_id`` whose external ids are not in ``keep``."""

    def write(s: Any) -> list[str]:
        rows = s.execute(select(ExternalRecord).where(
            ExternalRecord.organization_id == organization_id, ExternalRecord.source == source,
            ExternalRecord.kind == kind, ExternalRecord.resource_id == resource_id,
            ExternalRecord.deleted_at.is_(None))).scalars().all()
        gone = [r for r in rows if r.external_id not in keep]
        for record in gone:
            record.deleted_at = record.updated_at = utcnow()
        return [r.external_id for r in gone]

    return in_transaction(write)


# --------------------------------------------------------------------------- assets of a collection


def store_external(organization_id: uuid.UUID, filename: str, data: bytes, *, collection_id: str,
                   external_id: str, source: str) -> Asset:
    """Store a fetched file as the live asset for ``external_id`` in the collection; an older live
    asset for the same external id is superseded (marked deleted)."""
    asset = store_bytes(organization_id, filename, data, source=source)

    def write(s: Any) -> None:
        s.execute(update(Asset).where(
            Asset.organization_id == organization_id, Asset.collection_id == collection_id,
            Asset.external_id == external_id, Asset.deleted_at.is_(None), Asset.id != asset.id,
        ).values(deleted_at=utcnow(), updated_at=utcnow()))
        s.execute(update(Asset).where(Asset.id == asset.id).values(collection_id=collection_id,
                                                                   external_id=external_id))

    in_transaction(write)
    asset.collection_id, asset.external_id = collection_id, external_id
    return asset


def live_asset(organization_id: uuid.UUID, collection_id: str, external_id: str) -> Asset | None:
    return in_transaction(lambda s: s.execute(select(Asset).where(
        Asset.organization_id == organization_id, Asset.collection_id == collection_id,
        Asset.external_id == external_id, Asset.deleted_at.is_(None))).scalars().first())


def mark_deleted(organization_id: uuid.UUID, collection_id: str, external_ids: Iterable[str]) -> int:
    """Mark the live assets of these external ids deleted; returns how many were."""
    ids = list(external_ids)
    if not ids:
        return 0

    def write(s: Any) -> int:
        return s.execute(update(Asset).where(
            Asset.organization_id == organization_id, Asset.collection_id == collection_id,
            Asset.external_id.in_(ids), Asset.deleted_at.is_(None),
        ).values(deleted_at=utcnow(), updated_at=utcnow())).rowcount

    return in_transaction(write)


# --------------------------------------------------------------------------- connector state


def load_state(organization_id: uuid.UUID, connector: str, resource_id: str) -> dict[str, Any]:
    row = in_transaction(lambda s: s.execute(select(ConnectorState.state).where(
        ConnectorState.organization_id == organization_id, ConnectorState.connector == connector,
        ConnectorState.resource_id == resource_id)).scalar_one_or_none())
    return dict(row or {})


def save_state(organization_id: uuid.UUID, connector: str, resource_id: str, state: dict[str, Any]) -> None:
    def write(s: Any) -> None:
        row = s.execute(select(ConnectorState).where(
            ConnectorState.organization_id == organization_id, ConnectorState.connector == connector,
            ConnectorState.resource_id == resource_id)).scalar_one_or_none()
        if row is None:
            s.add(ConnectorState(organization_id=organization_id, connector=connector, resource_id=resource_id,
                                 state=state))
        else:
            row.state, row.updated_at = state, utcnow()

    try:
        in_transaction(write)
    except IntegrityError:
        in_transaction(write)
