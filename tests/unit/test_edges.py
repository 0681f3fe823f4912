"""The web edges as an attacker tries them: login's ``next``, websocket origins, the metrics guard, the prod
secret, and what the CLI prints of stored text."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from backend.api.edges import metrics_allowed, origin_allowed
from backend.cli import shown
from backend.config import DEV_SECRET, Settings
from backend.errors import InvalidSettings
from backend.api.signin import safe_next

OFF_SITE = [
    "/\\evil.example", "/%5Cevil.example", "/%5cevil.example", "/%255Cevil.example", "//evil.example",
    "///evil.example", "/%2Fevil.example", "/%2f%2fevil.example", "https://evil.example", "javascript:alert(1)",
    "data:text/html,x", "\\\\evil.example", "/\t/evil.example", "/\n/evil.example", "/%09/evil.example",
    "/%0d%0a/evil.example", "evil.example", "", " /x", "\x00/x", "/x\x1b[31m",
]


@pytest.mark.parametrize("target", OFF_SITE)
def test_next_refuses_anything_a_browser_could_resolve_off_site(target: str) -> None:
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/system/jobs", "/orgs/demo/jobs/0b1c?x=1", "/orgs/a%2Db/jobs"])
def test_next_keeps_paths_of_this_site(target: str) -> None:
    assert safe_next(target) == target


def test_websocket_origin_is_a_public_url_or_the_server_itself() -> None:
    public = ["https://jobs.example.com"]
    assert origin_allowed("https://jobs.example.com", "10.0.0.5:8000", public)
    assert origin_allowed("http://127.0.0.1:4123", "127.0.0.1:4123", public)  # one-port: same origin
    assert not origin_allowed("https://evil.example", "jobs.example.com", public)
    assert not origin_allowed("https://jobs.example.com.evil.example", "127.0.0.1:8000", public)
    assert not origin_allowed("null", "127.0.0.1:8000", public)
    assert not origin_allowed("http://127.0.0.1:9999", "127.0.0.1:4123", public)


def test_metrics_need_the_token_or_an_allowed_address() -> None:
    loopback = ["127.0.0.1/32", "::1/128"]
    assert metrics_allowed(Headers(), "127.0.0.1", None, loopback)
    assert metrics_allowed(Headers(), "::1", None, loopback)
    assert not metrics_allowed(Headers(), "10.1.2.3", None, loopback)
    assert not metrics_allowed(Headers(), None, None, loopback)
    assert not metrics_allowed(Headers({"authorization": "Bearer guess"}), "10.1.2.3", "s3cret", loopback)
    assert not metrics_allowed(Headers({"authorization": "Bearer "}), "10.1.2.3", "s3cret", loopback)
    assert metrics_allowed(Headers({"authorization": "Bearer s3cret"}), "10.1.2.3", "s3cret", loopback)
    assert metrics_allowed(Headers(), "10.1.2.3", None, ["10.0.0.0/8"])


@pytest.mark.parametrize("secret", ["", "x", "a" * 31, DEV_SECRET, " " * 40])
def test_prod_refuses_an_empty_short_or_default_secret_in_one_line(secret: str) -> None:
    with pytest.raises(InvalidSettings) as refused:
        Settings(env="prod", secret_key=secret)
    message = refused.value.message
    assert "\n" not in message and "CURATORE_SECRET_KEY" in message
    assert not secret.strip() or secret not in message  # the message never echoes the secret


def test_prod_takes_a_long_secret_and_dev_any() -> None:
    assert Settings(env="prod", secret_key="k" * 32).secret_key == "k" * 32
    assert Settings(env="dev", secret_key="").secret_key == ""


@pytest.mark.parametrize(("stored", "printed"), [
    ("\x1b[31mred", "\\x1b[31mred"), ("bell\x07", "bell\\x07"), ("txt.exe\u202eFDP", "txt.exe\\u202eFDP"),
    ("a\rb", "a\\x0db"), ("a\nb", "a\\x0ab"), ("\x9b2J", "\\x9b2J"), ("\u2066x\u2069", "\\u2066x\\u2069"),
    ("plain é ✓", "plain é ✓"),
])
def test_the_cli_escapes_control_and_bidi_characters(stored: str, printed: str) -> None:
    assert shown(stored) == printed


def test_a_traceback_keeps_its_lines_but_not_its_escapes() -> None:
    assert shown("Traceback\n  \x1b]0;pwned\x07", multiline=True) == "Traceback\n  \\x1b]0;pwned\\x07"
