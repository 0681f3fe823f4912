"""What the connector jobs share: an HTTP client that logs its retries on the run and stops at a
cancel request, carries a connection's credential only to that connection's origin, refuses URLs with
embedded credentials, follows redirects through the address guard and keeps secrets out of messages;
external records upserted, files stored as assets of a collection, and the state a connector keeps
between runs (``ConnectorState``)."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urljoin, urlsplit, urlunsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backend.connectors.connections import Connection, origin, show_origin
from backend.connectors.http import FetchFailed, FetchRefused, HttpClient
from backend.db.engine import in_transaction
from backend.db.models import Asset, ConnectorState, ExternalRecord
from backend.db.types import utcnow
from backend.errors import CuratoreError
from backend.storage.assets import store_bytes


class RunContext(Protocol):
    """What a connector needs of the run it works for (``backend.worker.base.JobContext`` is one): a warning
    in its activity log, and a cancel check between requests."""

    def warn(self, message: str, event_type: str = ..., **context: Any) -> None: ...

    def check_cancelled(self, *, every: float = ...) -> None: ...


# --------------------------------------------------------------------------- HTTP


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with each secret, as given and as it looks URL-encoded, replaced by ``***``."""
    for secret in secrets:
        for form in dict.fromkeys((secret, quote(secret or "", safe=""), quote_plus(secret or ""))):
            if form:
                text = text.replace(form, "***")
    return text


class _QueryCredentialFilter(logging.Filter):
    """httpx logs every request's URL at INFO, and a SAM.gov API key rides in the query: its value is
    replaced by ``***`` in those lines (the worker's log is read by people who may not see the key)."""

    PARAM = re.compile(r"([?&]api_key=)[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.PARAM.sub(r"\1***", message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


logging.getLogger("httpx").addFilter(_QueryCredentialFilter())


def refuse_embedded_credentials(url: str) -> None:
    """A URL with ``user:password@`` is refused before any request (httpx would send it as Basic auth);
    the message shows where it pointed, never the credentials."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise FetchRefused(f"Refusing {show_origin(url)}{parts.path}: the URL carries embedded credentials "
                           "(user:password@).")


class RunHttpClient(HttpClient):
    """An :class:`HttpClient` for one run: each retry is a WARN ``retry`` line on the run, and a
    cancel request seen while retrying stops the run instead of waiting out the backoff.

    Given a :class:`Connection`, it adds the connection's credential (a header or a query parameter) to each
    request whose origin (scheme, host, port) is the connection's, and to no other: a link or redirect to
    another origin is fetched without it. The callers never handle the credential themselves."""

    def __init__(self, ctx: RunContext, base_url: str, label: str, *, secrets: Iterable[str | None] = (),
                 connection: Connection | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("before_send", getattr(ctx, "ensure_held", None))  # a run that lost its worker's lease
        super().__init__(base_url, on_retry=self._retrying, **kwargs)
        self.ctx, self.label, self.connection, self.base_url = ctx, label, connection, base_url
        self.secrets = [s for s in (*secrets, connection.secret if connection else None) if s]
        self._current = ""

    @classmethod
    def for_connection(cls, ctx: RunContext, connection: Connection, label: str, **kwargs: Any) -> RunHttpClient:
        return cls(ctx, connection.base_url, label, connection=connection, **kwargs)

    def absolute(self, url: str) -> str:
        """``url`` as the request will go out: a relative one joins the base URL (as httpx joins it)."""
        if urlsplit(url).scheme:
            return url
        return f"{self.base_url.rstrip('/')}/{url.lstrip('/')}" if self.base_url else url

    def on_origin(self, url: str) -> bool:
        """Whether ``url`` goes to the connection's (or the base URL's) origin."""
        return origin(self.absolute(url)) == origin(self.base_url)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        target = self.absolute(url)
        refuse_embedded_credentials(target)
        if self.connection is not None and self.on_origin(target):
            url, kwargs = self._authorized(target, kwargs)
        self._current = redact(f"{method} {url}", self.secrets)
        try:
            return super().request(method, url, **kwargs)
        except (FetchFailed, FetchRefused) as exc:  # the URL in the message may carry an API key
            details = {k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in exc.details.items()}
            clean = type(exc)(redact(exc.message, self.secrets), **details)
            clean.retryable = exc.retryable
            raise clean from None

    def _authorized(self, url: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The request with the connection's credential: its headers added, its query parameters set in the
        URL (replacing a placeholder such as SAM.gov's ``api_key=null``)."""
        assert self.connection is not None
        kwargs = dict(kwargs)
        if self.connection.auth_headers:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **self.connection.auth_headers}
        params = self.connection.auth_params
        if params:
            parts = urlsplit(url)
            extra = kwargs.pop("params", None) or {}
            query = [(k, v) for k, v in [*parse_qsl(parts.query, keep_blank_values=True), *dict(extra).items()]
                     if k not in params]
            url = urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))
        return url, kwargs

    def get_following(self, url: str, *, headers: dict[str, str] | None = None, max_hops: int = 5) -> httpx.Response:
        """GET, following redirects; every hop goes through the address guard, and neither the headers given
        nor the connection's credential are sent on to another origin."""
        for _ in range(max_hops + 1):
            response = self.get(url, headers=headers)
            if not response.is_redirect:
                return response
            target = urljoin(str(response.url), response.headers["Location"])
            if origin(target) != origin(str(response.url)):
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
    asset for the same external id is superseded (marked deleted). The same bytes under the same name and
    source as the live asset are that asset (a run executed again after its worker was lost stores nothing
    twice, and its children find the asset they were spawned for)."""
    same = live_asset(organization_id, collection_id, external_id)
    if (same is not None and same.sha256 == hashlib.sha256(data).hexdigest() and same.source == source
            and same.filename == Path(filename).name.strip()[:500]):
        return same
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
