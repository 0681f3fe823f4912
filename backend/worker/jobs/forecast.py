"""forecast_sync: acquisition forecasts from a JSON API, kept as external records.

fetching: every page of the API (following ``next``). parsing: each record validated as a
:class:`Forecast`; an invalid one is counted and logged, not fatal. indexing: valid forecasts upserted as
``ExternalRecord`` (source ``forecast``, kind ``forecast``, resource = the forecast sync); forecasts of
this sync that the API no longer lists are marked deleted. The API is the configured connection, resolved
again here from the settings.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from backend.connectors import common, connections
from backend.connectors.connections import Connection
from backend.connectors.forecasts import Forecast, ForecastClient
from backend.jobtypes.configs import ForecastSyncConfig
from backend.worker.base import JobContext

SOURCE = KIND = "forecast"
LOGGED_INVALID = 20  # invalid records logged one by one; the rest only counted


def run(ctx: JobContext, config: ForecastSyncConfig) -> dict[str, Any]:
    connection = connections.resolve("forecast", config.connection, ctx.organization_id)
    raw = _fetch(ctx, connection, config.source)
    forecasts, invalid = _parse(ctx, raw)
    listed = {str(r["id"]) for r in raw if isinstance(r, dict) and r.get("id") is not None}  # invalid ones too
    counts = _index(ctx, forecasts, config.forecast_sync_id, listed)
    return {"fetched": len(raw), "valid": len(forecasts), "invalid": invalid, **counts}


def _fetch(ctx: JobContext, connection: Connection, source: str) -> list[Any]:
    records: list[Any] = []
    ctx.progress(0, None, phase="fetching", unit="records")
    with common.RunHttpClient.for_connection(ctx, connection, "Forecast API") as http:
        for page in ForecastClient(http).pages(source):
            records.extend(page.results)
            ctx.progress(len(records), page.count, phase="fetching", item=f"page {page.number}", unit="records")
            ctx.check_cancelled()
    ctx.info(f"Fetched {len(records)} forecasts from {connection.base_url} ({source}, connection "
             f"{connection.name!r})", "fetched", records=len(records))
    return records


def _parse(ctx: JobContext, raw: list[Any]) -> tuple[list[Forecast], int]:
    forecasts: dict[str, Forecast] = {}
    invalid = 0
    ctx.progress(0, len(raw), phase="parsing", unit="records")
    for n, record in enumerate(raw, 1):
        try:
            forecast = Forecast.model_validate(record)
        except ValidationError as exc:
            invalid += 1
            if invalid <= LOGGED_INVALID:
                ident = record.get("id") if isinstance(record, dict) else None
                ctx.warn(f"Forecast #{n} (id {ident!r}) is invalid: {_errors(exc)}", "invalid_record", index=n,
                         id=ident, errors=exc.errors(include_url=False, include_context=False, include_input=False))
            continue
        forecasts[forecast.id] = forecast  # a record listed twice: the later one wins
        if n % 200 == 0:
            ctx.progress(n, len(raw), phase="parsing", unit="records")
            ctx.check_cancelled()
    ctx.progress(len(raw), len(raw), phase="parsing", unit="records")
    if invalid:
        ctx.warn(f"{invalid} of {len(raw)} forecasts were invalid and skipped", "invalid_records", invalid=invalid)
    return list(forecasts.values()), invalid


def _index(ctx: JobContext, forecasts: list[Forecast], sync_id: str, listed: set[str]) -> dict[str, int]:
    counts = {"new": 0, "updated": 0, "removed": 0}
    ctx.progress(0, len(forecasts), phase="indexing", unit="forecasts")
    for n, forecast in enumerate(forecasts, 1):
        ctx.check_cancelled()
        created = common.upsert_record(ctx.organization_id, SOURCE, KIND, forecast.id, resource_id=sync_id,
                                       title=forecast.title, data=forecast.model_dump(mode="json"))
        counts["new" if created else "updated"] += 1
        ctx.progress(n, len(forecasts), phase="indexing", item=forecast.title[:80], unit="forecasts")
    removed = common.retire_records(ctx.organization_id, SOURCE, KIND, sync_id, listed)
    counts["removed"] = len(removed)
    ctx.info(f"Indexed {len(forecasts)} forecasts: {counts['new']} new, {counts['updated']} updated, "
             f"{len(removed)} no longer listed", "indexed", **counts)
    return counts


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors(include_url=False))
