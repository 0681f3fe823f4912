"""Brute-force protection for sign-in, shared by every process because it lives in the database.

Each failed sign-in is a row in ``login_failures``, once for the account (the email tried, known or not, so the
answer does not reveal which emails exist) and once for the source address when there is one. Past
``ACCOUNT_LIMIT`` failures of an account, or ``ADDRESS_LIMIT`` of an address, within ``WINDOW``, sign-in is
refused -- even with the right password -- for a backoff that doubles with each further failure
(``CURATORE_LOGIN_BACKOFF_SECONDS`` (30) × 2^(failures - limit), at most ``WINDOW``), counted from the last failure. A success
clears the account's failures (never the address's: one good account must not unlock a guessing address).
Refused attempts while locked are not counted, so the backoff ends when announced.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from backend import audit
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import LoginFailure
from backend.db.types import utcnow
from backend.errors import RateLimited
from backend.validation import storable

WINDOW = timedelta(minutes=15)
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20
MAX_KEY = 320


class TooManySignIns(RateLimited):
    """Too many failed sign-ins; try again later."""

    code = "too_many_sign_ins"
    seconds = 0  # how long to wait


def too_many(seconds: int) -> TooManySignIns:
    exc = TooManySignIns(f"Too many failed sign-ins; try again in {seconds} s.")
    exc.seconds = seconds
    return exc


def _keys(email: str, address: str | None) -> list[tuple[str, str, int]]:
    """(scope, key, limit) for this attempt; the key is storable text (no NUL or lone surrogate)."""
    keys = [("account", storable(email.strip().lower())[:MAX_KEY], ACCOUNT_LIMIT)]
    if address:
        keys.append(("address", storable(address)[:MAX_KEY], ADDRESS_LIMIT))
    return keys


def _wait(scope: str, key: str, limit: int, now: datetime) -> int:
    """Seconds until this key may try again (0: now)."""
    stmt = (select(LoginFailure.at).where(LoginFailure.scope == scope, LoginFailure.key == key,
                                          LoginFailure.at > now - WINDOW).order_by(LoginFailure.at))
    times = list(in_transaction(lambda s: s.execute(stmt).scalars().all()))
    if len(times) < limit:
        return 0
    base = timedelta(seconds=get_settings().login_backoff_seconds)
    backoff = min(base * 2 ** (len(times) - limit), WINDOW)
    return max(0, math.ceil((times[-1] + backoff - now).total_seconds()))


def check(email: str, address: str | None) -> None:
    """Raise :class:`TooManySignIns` ("try again in N s") while the account or the address is locked."""
    now = utcnow()
    wait = max(_wait(scope, key, limit, now) for scope, key, limit in _keys(email, address))
    if wait:
        raise too_many(wait)


def failed(email: str, address: str | None) -> None:
    """Count a failed sign-in; audit a lockout it starts."""
    keys = _keys(email, address)
    in_transaction(lambda s: s.add_all([LoginFailure(scope=scope, key=key) for scope, key, _ in keys]))
    now = utcnow()
    for scope, key, limit in keys:
        wait = _wait(scope, key, limit, now)
        if wait:
            audit.record(keys[0][1], "login_lockout", scope=scope, key=key, seconds=wait)


def succeeded(email: str) -> None:
    """A correct sign-in clears the account's failures."""
    key = _keys(email, None)[0][1]
    in_transaction(lambda s: s.execute(delete(LoginFailure).where(LoginFailure.scope == "account",
                                                                  LoginFailure.key == key)))
