"""The guard where connections are made (PinnedBackend): real sockets on 127.0.0.1, and DNS stood in
for by a resolver stub that answers a made-up name from a script, so a rebinding attack (a public answer
for the check, then a loopback one) can be played. Nothing here mocks the client under test."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from backend.config import reset_settings
from backend.connectors.http import FetchFailed, FetchRefused, HttpClient, PinnedTransport

PUBLIC = "93.184.215.14"


@pytest.fixture(autouse=True)
def guard_on(monkeypatch):
    monkeypatch.delenv("CURATORE_ALLOW_PRIVATE_FETCH", raising=False)
    reset_settings()
    yield
    reset_settings()


@pytest.fixture
def allow_private(monkeypatch):
    monkeypatch.setenv("CURATORE_ALLOW_PRIVATE_FETCH", "true")
    reset_settings()


class Resolver:
    """Stands in for DNS for one name: each lookup takes the next scripted address (the last repeats);
    other names resolve as usual. It replaces ``socket.getaddrinfo``, which the guard and
    ``socket.create_connection`` both use, so a second lookup anywhere would be seen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, *answers: str) -> None:
        self.real, self.name, self.answers, self.lookups = socket.getaddrinfo, name, list(answers), 0
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        address = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return self.real(address, port, *args, **kwargs)


class Server:
    """An HTTP server on 127.0.0.1 that records the Host header of every request it answers."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hosts.append(self.headers.get("Host", ""))
                body = b"inside"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_rebinding_to_loopback_after_the_check_is_refused_at_connect(monkeypatch, server):
    """The attack: the name is public when the guard looks, loopback when the client connects."""
    dns = Resolver(monkeypatch, "rebind.test", PUBLIC, "127.0.0.1")
    with HttpClient(max_attempts=1) as client, pytest.raises(FetchRefused) as refused:
        client.get(f"http://rebind.test:{server.port}/admin")
    assert server.hosts == [], "nothing reached the internal service"
    assert dns.lookups == 2, "the early check, then the connection's own lookup"
    assert "rebind.test" in refused.value.message and "internal address (127.0.0.1)" in refused.value.message


def test_a_name_for_loopback_is_refused_by_the_transport_itself(monkeypatch, server):
    Resolver(monkeypatch, "inside.test", "127.0.0.1")
    with httpx.Client(transport=PinnedTransport()) as client, pytest.raises(FetchRefused):
        client.get(f"http://inside.test:{server.port}/")  # no check_address in front: the transport alone
    assert server.hosts == []


def test_a_name_with_one_internal_address_among_public_ones_is_refused(monkeypatch, server):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))])
    with httpx.Client(transport=PinnedTransport()) as client, pytest.raises(FetchRefused):
        client.get(f"http://mixed.test:{server.port}/")
    assert server.hosts == []


def test_the_connection_goes_to_the_address_resolved_once(monkeypatch, server, allow_private):
    """A second lookup would answer 127.0.0.2, where nothing listens: the request only arrives if the
    socket was connected to the address the transport resolved (and checked), not to the name."""
    dns = Resolver(monkeypatch, "pinned.test", "127.0.0.1", "127.0.0.2")
    with HttpClient(max_attempts=1) as client:
        response = client.get(f"http://pinned.test:{server.port}/")
    assert response.text == "inside" and dns.lookups == 1
    assert server.hosts == [f"pinned.test:{server.port}"], "the Host header still names the host"


def test_tls_is_for_the_host_name_not_the_address(monkeypatch, allow_private):
    """The TLS ClientHello (sent in the clear) carries the host name as SNI although the socket was
    connected to an address; the handshake then fails, since no certificate for that name is offered."""
    listener = socket.create_server(("127.0.0.1", 0))
    port, hello = listener.getsockname()[1], []

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            hello.append(conn.recv(4096))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    Resolver(monkeypatch, "secure.test", "127.0.0.1")
    with HttpClient(max_attempts=1) as client, pytest.raises(FetchFailed):
        client.get(f"https://secure.test:{port}/")
    thread.join(10)
    listener.close()
    assert hello and hello[0][:1] == b"\x16" and b"secure.test" in hello[0]


def test_proxies_from_the_environment_are_not_used(monkeypatch, server, allow_private):
    proxy = Server()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        with HttpClient(max_attempts=1) as client:
            assert client.get(f"http://127.0.0.1:{server.port}/").text == "inside"
        assert proxy.hosts == [] and len(server.hosts) == 1
    finally:
        proxy.httpd.shutdown()
        proxy.httpd.server_close()
