"""An acquisition-forecast API client and the shape of one forecast.

``GET {base}/api/forecasts?page=N`` answers ``{"count": N, "results": [...], "next": url-or-null}``;
the client follows ``next`` (each URL through the address guard) until it is null, on the connection's
origin only: a ``next`` link to another origin is refused (a connection's client talks to its own service).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.connectors.common import RunHttpClient, as_error
from backend.connectors.connections import show_origin
from backend.connectors.http import FetchFailed
from backend.errors import CuratoreError

MAX_PAGES = 10_000


class ForecastError(CuratoreError):
    """The forecast API did not answer as expected."""

    code = "forecast_error"


class Forecast(BaseModel):
    """One forecast record; fields beyond these are kept as they came."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=300)
    title: str = Field(min_length=1)
    agency: str | None = None
    naics: str | None = Field(default=None, pattern=r"^\d{2,6}$")
    fiscal_year: int | None = Field(default=None, ge=1990, le=2100)
    estimated_value: float | None = Field(default=None, ge=0)
    anticipated_award_date: date | None = None

    @field_validator("id", "naics", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@dataclass
class ForecastPage:
    number: int
    results: list[Any]
    count: int | None
    next_url: str | None


class ForecastClient:
    def __init__(self, http: RunHttpClient) -> None:
        self.http = http

    def pages(self, source: str = "default") -> Iterator[ForecastPage]:
        params = {"page": 1, **({"source": source} if source != "default" else {})}
        url = f"/api/forecasts?{urlencode(params)}"
        seen: set[str] = set()
        for number in range(1, MAX_PAGES + 1):
            data = self._json(url, number)
            results, next_url = data.get("results"), data.get("next")
            if not isinstance(results, list):
                raise ForecastError(f"The forecast API answered page {number} without a results list.")
            yield ForecastPage(number, results, data.get("count"), next_url)
            if not next_url:
                return
            if not isinstance(next_url, str):
                raise ForecastError(f"The forecast API's next link on page {number} is not a URL.")
            if not self.http.on_origin(next_url):
                raise ForecastError(f"The forecast API's next link on page {number} goes to {show_origin(next_url)}, "
                                    f"another origin than the connection's ({show_origin(self.http.base_url)}); "
                                    "refusing to follow it.")
            if next_url in seen:
                raise ForecastError(f"The forecast API's next link loops back to {next_url}.")
            seen.add(next_url)
            url = next_url
        raise ForecastError(f"The forecast API kept linking to more pages after {MAX_PAGES}.")

    def _json(self, url: str, number: int) -> dict[str, Any]:
        try:
            response = self.http.get_following(url)
        except FetchFailed as exc:
            raise as_error(ForecastError, f"The forecast API failed on page {number}: {exc.message}", exc) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ForecastError(f"The forecast API answered page {number} with something that is not a JSON object "
                                f"(HTTP {response.status_code}, {response.headers.get('Content-Type')}).")
        return data
