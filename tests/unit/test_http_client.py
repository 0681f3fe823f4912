"""The shared outbound HTTP client (backend/connectors/http.py) and the connectors' wrapper of it:
retries with backoff on 5xx, 429 and connection errors, Retry-After in seconds and as an HTTP date,
no retry on other 4xx, the guard against loopback, private and link-local addresses, and the byte limit
on every response body. No network: requests go to an httpx MockTransport, and the guard is exercised
with IP literals (tests/unit/test_http_transport.py connects for real)."""

from __future__ import annotations

import gzip
import time
from email.utils import formatdate

import httpx
import pytest

from backend.config import reset_settings
from backend.connectors import common
from backend.connectors.http import FetchFailed, FetchRefused, HttpClient, ResponseTooLarge, check_address
from backend.errors import JobCancelled

PUBLIC = "http://93.184.215.14"  # a global address: the guard lets it through without resolving anything


@pytest.fixture(autouse=True)
def guard_on(monkeypatch):
    monkeypatch.delenv("CURATORE_ALLOW_PRIVATE_FETCH", raising=False)
    reset_settings()
    yield
    reset_settings()


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr("backend.connectors.http.time.sleep", waited.append)
    return waited


class Script:
    """A mock server answering from a list: a status, a (status, headers) pair, or an exception to raise."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return httpx.Response(status, headers=headers, text=f"answer {status}")


def client_for(script, base_url=PUBLIC, **kwargs):
    client = HttpClient(base_url, **kwargs)
    client.client.close()
    client.client = httpx.Client(base_url=base_url, transport=httpx.MockTransport(script), follow_redirects=False)
    return client


def test_5xx_is_retried_with_exponential_backoff(sleeps):
    script, retries = Script(500, 503, 200), []
    with client_for(script, on_retry=lambda *a: retries.append(a)) as client:
        assert client.get("/data").status_code == 200
    assert len(script.requests) == 3
    assert retries == [("HTTP 500", 1, 0.5), ("HTTP 503", 2, 1.0)] and sleeps == [0.5, 1.0]


def test_gives_up_after_max_attempts_with_the_status(sleeps):
    script = Script(502)
    with client_for(script, max_attempts=3) as client, pytest.raises(FetchFailed) as failed:
        client.get("/data")
    assert len(script.requests) == 3 and sleeps == [0.5, 1.0]
    assert failed.value.details["status"] == 502 and "answered HTTP 502" in failed.value.message
    assert failed.value.retryable, "a later attempt of the run may succeed"


def test_connection_errors_are_retried(sleeps):
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 200)
    with client_for(script) as client:
        assert client.get("/data").status_code == 200
    assert len(script.requests) == 3 and len(sleeps) == 2


def test_connection_errors_give_up_with_a_message(sleeps):
    with client_for(Script(httpx.ConnectError("refused")), max_attempts=2) as client, pytest.raises(FetchFailed) as e:
        client.get("/data")
    assert "failed after 2 attempts" in e.value.message and "refused" in e.value.message and e.value.retryable


def test_retry_after_in_seconds_is_honoured(sleeps):
    with client_for(Script((429, {"Retry-After": "7"}), 200)) as client:
        assert client.get("/data").status_code == 200
    assert sleeps == [7.0]


def test_retry_after_as_an_http_date_is_honoured(sleeps):
    when = formatdate(time.time() + 12, usegmt=True)
    with client_for(Script((503, {"Retry-After": when}), 200)) as client:
        assert client.get("/data").status_code == 200
    assert len(sleeps) == 1 and 9.0 <= sleeps[0] <= 12.5


def test_retry_after_is_capped_by_the_longest_backoff(sleeps):
    with client_for(Script((429, {"Retry-After": "3600"}), 200), max_backoff_seconds=5) as client:
        client.get("/data")
    assert sleeps == [5]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_other_4xx_are_not_retried(sleeps, status):
    script = Script(status)
    with client_for(script) as client, pytest.raises(FetchFailed) as failed:
        client.get("/data")
    assert len(script.requests) == 1 and sleeps == []
    assert failed.value.details["status"] == status and failed.value.details["body"] == f"answer {status}"
    assert not failed.value.retryable, "the service said no: retrying the run will not help"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/x", "http://10.1.2.3/", "http://192.168.0.10/", "http://172.16.5.4/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://[fe80::1]/", "http://0.0.0.0/",
    "http://100.100.100.200/latest/meta-data/",  # shared address space: a cloud metadata service
])
def test_guard_refuses_internal_addresses(url):
    script = Script(200)
    with client_for(script, base_url="") as client, pytest.raises(FetchRefused) as refused:
        client.get(url)
    assert script.requests == [], "nothing was sent"
    assert "internal address" in refused.value.message and "CURATORE_ALLOW_PRIVATE_FETCH" in refused.value.message


def test_guard_refuses_other_schemes():
    with pytest.raises(FetchRefused, match="Only http and https"):
        check_address("file:///etc/passwd")


def test_guard_accepts_a_public_address():
    script = Script(200)
    with client_for(script) as client:
        assert client.get("/ok").status_code == 200
    assert str(script.requests[0].url) == f"{PUBLIC}/ok"


def test_guard_checks_absolute_urls_given_to_a_public_base():
    script = Script(200)
    with client_for(script) as client, pytest.raises(FetchRefused):
        client.get("http://127.0.0.1:9/next-page")  # e.g. a next link pointing inside
    assert script.requests == []


def test_the_setting_allows_private_addresses(monkeypatch):
    monkeypatch.setenv("CURATORE_ALLOW_PRIVATE_FETCH", "true")
    reset_settings()
    script = Script(200)
    with client_for(script, base_url="http://127.0.0.1:9") as client:
        assert client.get("/local").status_code == 200


# --------------------------------------------------------------------------- the connectors' wrapper


class FakeContext:
    def __init__(self, cancel_after: int | None = None):
        self.lines, self.cancel_after = [], cancel_after

    def warn(self, message, event_type="warning", **context):
        self.lines.append((event_type, message, context))

    def check_cancelled(self):
        if self.cancel_after is not None and len(self.lines) > self.cancel_after:
            raise JobCancelled("Stopped at the cancel request")


def run_client(script, ctx, secrets=(), base_url=PUBLIC):
    client = common.RunHttpClient(ctx, base_url, "Test API", secrets=secrets)
    client.client.close()
    client.client = httpx.Client(base_url=base_url, transport=httpx.MockTransport(script), follow_redirects=False)
    return client


def test_retries_are_logged_without_secrets_and_stop_at_a_cancel(sleeps):
    ctx = FakeContext(cancel_after=1)
    with run_client(Script(500), ctx, secrets=["k3y"]) as client, pytest.raises(JobCancelled):
        client.get("/search?api_key=k3y")
    assert len(ctx.lines) == 2 and sleeps == [0.5], "stopped instead of waiting out the next backoff"
    event_type, message, context = ctx.lines[0]
    assert event_type == "retry" and "HTTP 500 on GET /search?api_key=***" in message and "k3y" not in message
    assert context["attempt"] == 1 and context["delay_seconds"] == 0.5


def test_errors_do_not_carry_secrets(sleeps):
    with run_client(Script(403), FakeContext(), secrets=["k3y"]) as client, pytest.raises(FetchFailed) as failed:
        client.get("/search?api_key=k3y")
    assert "k3y" not in failed.value.message and "api_key=***" in failed.value.details["url"]
    assert failed.value.details["status"] == 403 and not failed.value.retryable


def test_redirects_are_followed_through_the_guard_and_drop_the_token():
    def server(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.path == "/content":
            return httpx.Response(302, headers={"Location": "http://8.8.8.8/download/1?sig=x"})
        if request.url.path == "/download/1":
            return httpx.Response(302, headers={"Location": "http://127.0.0.1/internal"})
        return httpx.Response(200, text="file")

    seen: list = []
    with run_client(server, FakeContext()) as client:
        with pytest.raises(FetchRefused):
            client.get_following("/content", headers={"Authorization": "Bearer t"})
    assert seen == [(f"{PUBLIC}/content", "Bearer t"), ("http://8.8.8.8/download/1?sig=x", None)]


@pytest.mark.parametrize(("headers", "url", "expected"), [
    ({"Content-Disposition": 'attachment; filename="SOW final.pdf"'}, "http://h/x/download", "SOW final.pdf"),
    ({"Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"}, "http://h/x", "résumé.txt"),
    ({"Content-Disposition": 'attachment; filename="../../etc/passwd"'}, "http://h/x", "passwd"),
    ({}, "http://h/files/report.csv?sig=1", "report.csv"),
    ({}, "http://h/files/1/download", "fallback.bin"),
])
def test_download_file_names(headers, url, expected):
    response = httpx.Response(200, headers=headers, request=httpx.Request("GET", url))
    assert common.filename_from(response, "fallback.bin") == expected


# --------------------------------------------------------------------------- response size limits


class Drip(httpx.SyncByteStream):
    """A body of ``chunks`` chunks of 64 KiB, generated as it is read; ``read`` counts what was taken."""

    CHUNK = 64 * 1024

    def __init__(self, chunks: int):
        self.chunks, self.read = chunks, 0

    def __iter__(self):
        for _ in range(self.chunks):
            self.read += self.CHUNK
            yield b"x" * self.CHUNK


def streaming(stream, headers=None, status=200):
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers=headers or {}, stream=stream)

    return server, seen


def test_a_body_past_the_limit_is_cut_off_after_one_chunk_more():
    body = Drip(chunks=16_000)  # 1000 MiB if it were read to the end
    server, _ = streaming(body)
    with client_for(server) as client, pytest.raises(ResponseTooLarge) as too_large:
        client.get("/big", max_bytes=2**20)
    assert 2**20 < body.read <= 2**20 + Drip.CHUNK
    assert "is larger than 1 MiB (the limit for this fetch" in too_large.value.message
    assert too_large.value.details["limit"] == 2**20 and not too_large.value.retryable


def test_a_content_length_over_the_limit_is_refused_before_reading():
    body = Drip(chunks=16_000)
    server, seen = streaming(body, headers={"Content-Length": str(16_000 * Drip.CHUNK)})
    with client_for(server) as client, pytest.raises(ResponseTooLarge) as too_large:
        client.get("/big", max_bytes=5 * 2**20)
    assert body.read == 0 and len(seen) == 1, "refused once, from the headers, and not retried"
    assert "larger than 5 MiB" in too_large.value.message and "declares 1,048,576,000 bytes" in too_large.value.message


def test_a_compressed_body_is_counted_as_it_unpacks():
    bomb = gzip.compress(b"\0" * 64 * 2**20)  # about 64 KiB on the wire
    server, _ = streaming(httpx.ByteStream(bomb), headers={"Content-Encoding": "gzip"})
    with client_for(server) as client, pytest.raises(ResponseTooLarge):
        client.get("/bomb", max_bytes=8 * 2**20)


def test_a_body_within_the_limit_reads_as_usual():
    server, _ = streaming(httpx.ByteStream(b'{"items": [1, 2]}'), headers={"Content-Type": "application/json"})
    with client_for(server) as client:
        response = client.get("/ok", max_bytes=17)
    assert response.json() == {"items": [1, 2]} and response.text == '{"items": [1, 2]}' and len(response.content) == 17


def test_the_default_limit_is_the_setting(monkeypatch):
    monkeypatch.setenv("CURATORE_FETCH_MAX_BYTES", str(3 * Drip.CHUNK))
    reset_settings()
    small, large = Drip(chunks=3), Drip(chunks=4)
    with client_for(streaming(small)[0]) as client:
        assert len(client.get("/three").content) == 3 * Drip.CHUNK
    with client_for(streaming(large)[0]) as client, pytest.raises(ResponseTooLarge, match="larger than 0.1875 MiB"):
        client.get("/four")


def test_the_wrapper_keeps_the_limit_error_and_hides_the_key():
    server, _ = streaming(Drip(chunks=100))
    with run_client(server, FakeContext(), secrets=["k3y"]) as client, pytest.raises(ResponseTooLarge) as too_large:
        client.get("/file?api_key=k3y", max_bytes=Drip.CHUNK)
    assert "k3y" not in too_large.value.message and "k3y" not in too_large.value.details["url"]
    assert not too_large.value.retryable
