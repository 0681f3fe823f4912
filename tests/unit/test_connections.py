"""Connections as settings (backend/config.py) and their resolution (backend/connectors/connections.py):
what an operator may configure, what loading refuses (one line, never echoing a credential), and origins."""

from __future__ import annotations

import json

import pytest

from backend.config import Settings, reset_settings
from backend.connectors.common import redact
from backend.connectors.connections import origin, resolve
from backend.errors import InvalidConfig, InvalidSettings

SECRET = "pw-Secret-1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):  # type: ignore[no-untyped-def]
    for name in ("CURATORE_CONNECTIONS", "CURATORE_SHAREPOINT_BASE_URL", "CURATORE_SHAREPOINT_TOKEN",
                 "CURATORE_SAM_BASE_URL", "CURATORE_SAM_API_KEY", "CURATORE_FORECAST_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    reset_settings()
    yield
    reset_settings()


def refused(monkeypatch, **env: str) -> str:  # type: ignore[no-untyped-def]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings) as error:
        Settings()
    message = error.value.message
    assert "\n" not in message and SECRET not in message and "@graph" not in message and "@host" not in message
    return message


def connections(**entries: dict) -> str:
    return json.dumps(entries)


@pytest.mark.parametrize("url", [f"https://user:{SECRET}@graph.example.com/v1.0", f"https://user:{SECRET}@host",
                                 f"http://{SECRET}@host:8080/x", "https://@host"])
def test_base_urls_with_embedded_credentials_are_refused(monkeypatch, url):  # type: ignore[no-untyped-def]
    message = refused(monkeypatch, CURATORE_SHAREPOINT_BASE_URL=url)
    assert message.startswith("CURATORE_SHAREPOINT_BASE_URL: ") and "credentials" in message
    message = refused(monkeypatch, CURATORE_SHAREPOINT_BASE_URL="https://graph.microsoft.com/v1.0",
                      CURATORE_CONNECTIONS=connections(leaky={"kind": "sam", "base_url": url, "api_key": "k",
                                                              "organizations": ["*"]}))
    assert message.startswith("CURATORE_CONNECTIONS['leaky']: ") and "credentials" in message


@pytest.mark.parametrize(("entry", "expected"), [
    ({"kind": "ftp", "base_url": "https://h", "organizations": ["*"]}, "kind: Input should be"),
    ({"kind": "sam", "base_url": "file:///etc/passwd", "organizations": ["*"]}, "http:// or https://"),
    ({"kind": "sam", "base_url": "gopher://h", "organizations": ["*"]}, "http:// or https://"),
    ({"kind": "sam", "base_url": "https://h:notaport", "organizations": ["*"]}, "not a valid URL"),
    ({"kind": "sam", "base_url": "https://h"}, "organizations: Field required"),
    ({"kind": "sam", "base_url": "https://h", "organizations": []}, "organizations: List should have at least 1"),
    ({"kind": "sam", "base_url": "https://h", "token": SECRET, "organizations": ["*"]}, "takes no 'token'"),
    ({"kind": "forecast", "base_url": "https://h", "api_key": SECRET, "organizations": ["*"]}, "takes no 'api_key'"),
    ({"kind": "sam", "base_url": "https://h", "password": SECRET, "organizations": ["*"]}, "password: Extra inputs"),
])
def test_bad_connections_are_refused_at_load_in_one_line(monkeypatch, entry, expected):  # type: ignore
    assert expected in refused(monkeypatch, CURATORE_CONNECTIONS=connections(c1=entry))


def test_bad_names_and_shapes_are_refused(monkeypatch):  # type: ignore[no-untyped-def]
    entry = {"kind": "sam", "base_url": "https://h", "organizations": ["*"]}
    assert "a connection name is" in refused(monkeypatch, CURATORE_CONNECTIONS=json.dumps({"Not OK": entry}))
    assert "must be a JSON object" in refused(monkeypatch, CURATORE_CONNECTIONS="[1, 2]")
    assert "http:// or https://" in refused(monkeypatch, CURATORE_CONNECTIONS="{}",
                                            CURATORE_FORECAST_BASE_URL="javascript:alert(1)")


def test_defaults_and_named_connections_resolve(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CURATORE_SAM_API_KEY", SECRET)
    monkeypatch.setenv("CURATORE_CONNECTIONS", connections(
        shared={"kind": "sam", "base_url": "https://sam.example.com/", "api_key": "k2", "organizations": ["*"]},
        acme={"kind": "sam", "base_url": "https://acme.example.com", "organizations": ["acme"]}))
    reset_settings()
    default = resolve("sam", "default", None)
    assert (default.base_url, default.secret, default.setting) == ("https://api.sam.gov", SECRET,
                                                                   "CURATORE_SAM_API_KEY")
    assert SECRET not in repr(default) and SECRET not in repr(Settings())
    assert resolve("sam", "shared", None).base_url == "https://sam.example.com"
    assert resolve("sharepoint", "default", None).base_url == "https://graph.microsoft.com/v1.0"
    with pytest.raises(InvalidConfig) as error:  # open to acme only: not to a run of no organization
        resolve("sam", "acme", None)
    assert error.value.message == ("There is no SAM.gov connection 'acme' for this organization; it may use: "
                                   "default, shared.")
    with pytest.raises(InvalidConfig) as error:  # no CURATORE_FORECAST_BASE_URL: no default forecast connection
        resolve("forecast", "default", None)
    assert "it may use none" in error.value.message
    with pytest.raises(InvalidConfig):  # a sam connection is not a sharepoint connection
        resolve("sharepoint", "shared", None)


def test_origins_and_redaction():  # type: ignore[no-untyped-def]
    assert origin("https://Graph.Example.com/v1.0/x") == origin("https://graph.example.com:443/y?z=1")
    assert origin("http://h/") != origin("https://h/") != origin("https://h:8443/")
    assert redact("a k%2By k+y b", ["k+y"]) == "a *** *** b"
