"""backend.validation on its own: the messages name the limit and where; nothing recurses on the input."""

from __future__ import annotations

import json

import pytest

from backend.validation import (
    MAX_CONFIG_BYTES, InvalidInput, check_input, check_priority, check_text, displayable, parse_json, storable,
)


def deep(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def refusal(fn, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(InvalidInput) as caught:
        fn(*args, **kwargs)
    assert caught.value.http_status == 422
    json.dumps(caught.value.message, ensure_ascii=False).encode()  # the message itself always encodes
    return caught.value.message


def test_size_is_measured_and_named():
    assert refusal(check_input, {"x": "y" * 10 * 1024 * 1024}, "config", max_bytes=MAX_CONFIG_BYTES) == \
        "config is 10.0 MiB; the limit is 256 KiB."
    check_input({"x": "y" * 1000}, "config", max_bytes=MAX_CONFIG_BYTES)


def test_cli_text_is_measured_before_it_is_parsed():
    assert refusal(parse_json, '"' + "y" * 50 * 1024 * 1024 + '"', "--config") == \
        "--config is 50.0 MiB; the limit is 256 KiB."


def test_depth_never_recurses_however_deep():
    for depth in (33, 500, 200_000):
        assert "nested more than 32 levels" in refusal(check_input, deep(depth), "config")
    check_input(deep(31), "config")
    assert "nested more than 32 levels" in refusal(parse_json, "[" * 100_000 + "]" * 100_000, "--config")


@pytest.mark.parametrize(("value", "where"), [
    ({"a": [0, {"b": "\x00"}]}, "config.a.1.b: text may not contain NUL"),
    ({"a": {"\udfff": 1}}, "config.a.\\udfff (in a key): text holds a lone surrogate (U+DFFF)"),
    ({"a": float("inf")}, "config.a: inf is not a number"),
])
def test_unstorable_values_are_named_where_they_are(value, where):
    assert refusal(check_input, value, "config").startswith(where)


def test_valid_unicode_passes():
    check_input({"é": ["\U0001f600", "\ufffd", "\u202e"]}, "config")


@pytest.mark.parametrize("priority", [True, False, "3", 2.0, -1, 5])
def test_priority_is_a_strict_integer(priority):
    assert refusal(check_priority, priority).startswith("priority must be an integer from 0 to 4")


def test_text_checks():
    check_text(None, "name")
    assert refusal(check_text, 3, "name") == "name must be text, not int."
    assert refusal(check_text, "x" * 301, "name", max_length=300) == "name is 301 characters long; the limit is 300."


def test_output_replaces_what_cannot_be_encoded_and_cuts_depth():
    shown = displayable({"\udfff": ["a\ud800", deep(500)]})
    json.dumps(shown, ensure_ascii=False).encode()
    assert shown["\ufffd"][0] == "a\ufffd"
    assert storable("a\x00b\udfff") == "a\ufffdb\ufffd"
