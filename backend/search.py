"""Full-text search over extracted text (the ``asset_search`` table of migration 0003).

SQLite: an FTS5 virtual table, queried with MATCH, ranked by bm25 and cut with ``snippet()``.
PostgreSQL: a generated ``tsvector`` column with a GIN index, queried with
``plainto_tsquery('english', ...)``, ranked by ``ts_rank`` and cut with ``ts_headline``.

User input never reaches FTS5's query syntax: it is split into words and each word is quoted, so
``"foo AND (`` is searched as the words ``foo`` and ``and`` rather than parsed as operators.
"""

from __future__ import annotations

import re
import uuid
from typing import NamedTuple

from sqlalchemy import text
from sqlmodel import Session

from backend.db.engine import in_transaction

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_BODY_CHARS = 2_000_000  # the index keeps the first 2 MB of text of a very long document


class SearchHit(NamedTuple):
    asset_id: uuid.UUID
    filename: str
    snippet: str
    rank: float  # higher is better on both backends


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _key(session: Session, value: uuid.UUID | str) -> uuid.UUID | str:
    """How an id is stored: 32 hex digits on SQLite (as SQLAlchemy's Uuid type stores ``assets.id``), uuid on PG."""
    value = uuid.UUID(str(value))
    return value.hex if _is_sqlite(session) else value


def index_asset(
    session: Session | None, asset_id: uuid.UUID | str, organization_id: uuid.UUID | str, filename: str, body: str
) -> None:
    """Put (or replace) one asset's text in the search index, in ``session``'s transaction or a new one."""

    def write(s: Session) -> None:
        params = {"a": _key(s, asset_id), "o": _key(s, organization_id), "f": filename, "b": body[:MAX_BODY_CHARS]}
        if _is_sqlite(s):  # BEGIN IMMEDIATE serialises writers, so delete + insert cannot race
            s.execute(text("DELETE FROM asset_search WHERE asset_id = :a"), params)
            s.execute(text("INSERT INTO asset_search (asset_id, organization_id, filename, body) "
                           "VALUES (:a, :o, :f, :b)"), params)
        else:
            s.execute(text("INSERT INTO asset_search (asset_id, organization_id, filename, body) "
                           "VALUES (:a, :o, :f, :b) ON CONFLICT (asset_id) DO UPDATE SET "
                           "organization_id = EXCLUDED.organization_id, filename = EXCLUDED.filename, "
                           "body = EXCLUDED.body"), params)

    in_transaction(write, session)


def unindex_asset(session: Session | None, asset_id: uuid.UUID | str) -> None:
    """Take an asset out of the search index (it was deleted or replaced)."""
    in_transaction(lambda s: s.execute(text("DELETE FROM asset_search WHERE asset_id = :a"),
                                       {"a": _key(s, asset_id)}), session)


def words(query: str) -> list[str]:
    return _WORD.findall(query)


def fts5_query(query: str) -> str:
    """User input as an FTS5 query: every word a quoted string (so no operator survives), all required."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words(query))


_SQLITE = text(
    "SELECT s.asset_id, s.filename, snippet(asset_search, -1, '[', ']', '…', 16) AS snippet, "
    "-bm25(asset_search) AS rank "
    "FROM asset_search s JOIN assets a ON a.id = s.asset_id "
    "WHERE asset_search MATCH :q AND s.organization_id = :o AND a.deleted_at IS NULL "
    "ORDER BY bm25(asset_search) LIMIT :n"
)
_POSTGRES = text(
    "SELECT s.asset_id, s.filename, "
    "ts_headline('english', s.body, q, 'StartSel=[, StopSel=], MaxWords=24, MinWords=8, MaxFragments=1') "
    "AS snippet, ts_rank(s.tsv, q) AS rank "
    "FROM asset_search s JOIN assets a ON a.id = s.asset_id, plainto_tsquery('english', :q) q "
    "WHERE s.tsv @@ q AND s.organization_id = :o AND a.deleted_at IS NULL "
    "ORDER BY rank DESC, s.filename LIMIT :n"
)


def search(organization_id: uuid.UUID | str, query: str, limit: int = 20) -> list[SearchHit]:
    """The organization's assets whose text or file name matches every word of ``query``, best first."""
    if not words(query) or limit < 1:
        return []

    def read(s: Session) -> list[SearchHit]:
        sqlite = _is_sqlite(s)
        params = {"q": fts5_query(query) if sqlite else query, "o": _key(s, organization_id), "n": min(limit, 1000)}
        rows = s.execute(_SQLITE if sqlite else _POSTGRES, params).all()
        return [SearchHit(uuid.UUID(str(r[0])), r[1], r[2] or "", float(r[3])) for r in rows]

    return in_transaction(read)
