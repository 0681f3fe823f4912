"""Input hygiene in one place: what a run may be given, and how a stored value is shown.

Every run is created through ``service.create_run`` and its config through ``Registry.validate_config``, which
call :func:`check_input` before pydantic sees the data; the API, the UI and the CLI therefore refuse the same
things with the same message: text that cannot be stored (a lone surrogate cannot be encoded as UTF-8;
PostgreSQL text cannot hold NUL), non-finite numbers (not JSON), a config over :data:`MAX_CONFIG_BYTES` or
nested deeper than :data:`MAX_DEPTH`. The walk is iterative, so no input can exhaust the stack.

Rows written before these checks may still hold such values; :func:`displayable` is the one output boundary
that replaces what cannot be encoded (U+FFFD) and cuts what is nested too deep, so showing a run never raises.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from backend.errors import CuratoreError

MAX_CONFIG_BYTES = 256 * 1024  # a job config, as compact JSON
MAX_DEPTH = 32  # levels of objects and arrays in a job config
MAX_NAME = 300  # characters of a run's display name
MAX_BODY_BYTES = 1024 * 1024  # an API request body
SHOW_DEPTH = 64  # deeper stored values are shown as a placeholder

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, and surrogates (json.loads pairs the valid ones)
SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
TOO_DEEP = "\u2026 (nested too deep to show)"


class InvalidInput(CuratoreError):
    """The input cannot be accepted."""

    code = "invalid_input"
    http_status = 422


def size_text(n: int) -> str:
    """``10.0 MiB``, ``256 KiB``, ``17 bytes``: sizes in messages."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB" if n % 1024 == 0 else f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


def _where(path: tuple[Any, ...], what: str) -> str:
    """``config.stages.0.config``, with any character that cannot be shown escaped (the message is output too)."""
    parts = [what, *(str(p) for p in path)]
    return ".".join(escape(p)[:60] for p in parts)


def escape(text: str) -> str:
    """The text with NUL and surrogates written as ``\\uXXXX``, so it can be printed and stored."""
    return UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _bad_text(text: str) -> str | None:
    """Why this text cannot be stored, or None."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "text may not contain NUL (U+0000): it cannot be stored"
    return f"text holds a lone surrogate (U+{ord(char):04X}), which is not valid Unicode and cannot be stored"


def _walk(value: Any, max_depth: int) -> Iterator[tuple[tuple[Any, ...], Any, int]]:
    """Every (path, value, depth) in a JSON-like value, keys included (a key's path ends in the key);
    iterative, and it stops going deeper than ``max_depth`` + 1."""
    stack: list[tuple[tuple[Any, ...], Any, int]] = [((), value, 0)]
    while stack:
        path, item, depth = stack.pop()
        yield path, item, depth
        if depth > max_depth:
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append(((*path, key), key, -1))  # a key: checked as text, never descended into
                stack.append(((*path, key), child, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend(((*path, n), child, depth + 1) for n, child in enumerate(item))


def check_input(value: Any, what: str, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (:class:`InvalidInput`, naming ``what`` and where) a value that cannot be stored and shown:
    text with NUL or a lone surrogate (in keys and values, at any depth), NaN or an infinity, nesting deeper
    than ``max_depth`` levels, or (given ``max_bytes``) more than that many bytes of compact JSON."""
    for path, item, depth in _walk(value, max_depth):
        if depth > max_depth:
            raise InvalidInput(f"{what} is nested more than {max_depth} levels deep; the limit is {max_depth}.")
        if isinstance(item, str):
            reason = _bad_text(item)
            if reason is not None:
                key = " (in a key)" if depth == -1 else ""
                raise InvalidInput(f"{_where(path, what)}{key}: {reason}.")
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput(f"{_where(path, what)}: {item} is not a number JSON can hold.")
    if max_bytes is not None:
        size = json_size(value)
        if size > max_bytes:
            raise InvalidInput(f"{what} is {size_text(size)}; the limit is {size_text(max_bytes)}.")


def json_size(value: Any) -> int:
    """Bytes of the value as compact UTF-8 JSON (after :func:`check_input`'s walk, so the depth is bounded)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())


def parse_json(text: str, what: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """JSON text from a person (the CLI's ``--config``): its size is checked before it is parsed, and a
    nesting too deep for the parser is refused like any other, never a RecursionError."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(f"{what} is {size_text(size)}; the limit is {size_text(max_bytes)}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}.") from None
    except ValueError as exc:  # an integer too long to convert, say
        raise InvalidInput(f"{what} is not valid JSON: {escape(str(exc))}") from None


def check_text(value: Any, what: str, *, max_length: int | None = None) -> None:
    """A person's single string (a name, a reason): storable, and at most ``max_length`` characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text, not {type(value).__name__}.")
    check_input(value, what, max_depth=0)
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {max_length}.")


def check_priority(value: Any) -> None:
    """A priority is an integer 0-4: not ``true``, ``"3"`` or ``2.0``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        shown = escape(json.dumps(value, default=str))[:40]
        raise InvalidInput(f"priority must be an integer from 0 to 4, not {shown}.")


# --------------------------------------------------------------------------- output


def storable(text: str) -> str:
    """The text with NUL and surrogates replaced (U+FFFD): for a search term, which is compared, never
    stored, and which the database driver could not send as it is."""
    return UNSTORABLE.sub(REPLACEMENT, text)


def displayable(value: Any, max_depth: int = SHOW_DEPTH) -> Any:
    """A copy of a stored value that can always be encoded: lone surrogates become U+FFFD (in keys and
    values), and what is nested deeper than ``max_depth`` becomes a placeholder. Other leaves (numbers,
    dates, UUIDs) are kept as they are."""
    return _show(value, max_depth)


def _show(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        if depth <= 0:
            return TOO_DEEP
        return {_show(k, 0) if isinstance(k, str) else k: _show(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth <= 0:
            return TOO_DEEP
        return [_show(v, depth - 1) for v in value]
    return value
