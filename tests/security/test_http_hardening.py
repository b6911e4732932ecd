"""The HTTP API refuses hostile requests (issue 11, parts 2 and 4), over real HTTP on loopback.

A real monitor (small random-weight detector, token set) serves the API and the metrics
listener on 127.0.0.1; each refusal is shown with the request a hostile page or client
would send: a rebinding page's ``Host``, a token in a URL on a data route, undecodable token
bytes, a stream id with a trailing newline, JSON nested thousands deep. What already held
(401s, 415 for form posts, the 1 MiB limit, CSP) is checked again beside them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream_monitor.api.auth import QUERY_TOKEN_ROUTES
from stream_monitor.service import Service
from stream_monitor.config import ConfigError, load_config
from stream_monitor.host_allowlist import HostAllowList, parse_entry, split_host
from stream_monitor.ingest.urls import is_secret_param, redact
from tests.support.small import small_config

TOKEN = "hardening-token"
EVIL = "evil.example"


def _config(**api: Any) -> Any:
    overrides = small_config(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2,
                                                                        "window_stride": 2}},
                             api={"port": 0, "token": TOKEN, **api}, metrics={"port": 0}, alerts={"stdout": False})
    return load_config(overrides=overrides, environ={})


async def _started(**api: Any) -> Service:
    monitor = Service(_config(**api))
    await monitor.start()
    return monitor


class Client:
    """aiohttp against one monitor: ``status``/``call`` on the API, ``raw`` for bytes aiohttp
    would not send (no Host, non-ASCII header values)."""

    def __init__(self, session: aiohttp.ClientSession, monitor: Service) -> None:
        self.s, self.monitor = session, monitor
        self.api = f"http://127.0.0.1:{monitor.api_port}"
        self.metrics = f"http://127.0.0.1:{monitor.metrics_port}"

    async def call(self, method: str, path: str, token: str | None = TOKEN, base: str | None = None,
                   **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.s.request(method, (base or self.api) + path, headers=headers, **kw) as r:
            if method == "HEAD" or r.headers.get("Content-Type", "").startswith("multipart/"):
                return r.status, None
            body: Any = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def raw(self, request: bytes, port: int | None = None) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port or self.monitor.api_port)
        writer.write(request)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return int(reply.split(b" ", 2)[1]), reply


@pytest.fixture
def run() -> Any:
    def go(test: Any, **api: Any) -> None:
        async def main() -> None:
            monitor = await _started(**api)
            try:
                async with aiohttp.ClientSession() as s:
                    await test(Client(s, monitor))
            finally:
                await monitor.stop(grace=2.0)
        asyncio.run(main())
    return go


# ---------------------------------------------------------------- Host allow-list

def test_dns_rebinding_host_is_refused_everywhere(run: Any) -> None:
    """A page that rebound evil.example to 127.0.0.1 sends Host: evil.example: 421 on every
    route of both listeners, before the token is even looked at; loopback names pass."""

    async def test(c: Client) -> None:
        evil = {"Host": EVIL}
        requests: list[tuple[str, str, str | None, dict[str, Any]]] = [
            ("GET", "/streams", None, {}), ("GET", "/events", None, {}), ("GET", "/metrics", None, {}),
            ("GET", "/healthcheck", None, {}), ("GET", "/readyz", None, {}), ("GET", "/", None, {}),
            ("GET", "/static/app.js", None, {}), ("GET", "/no/such/route", None, {}),
            ("POST", "/predict", None, {"json": {"file_path": "x.mp4"}}),
            ("POST", "/streams", None, {"json": {"id": "a", "url": "synthetic:"}}),
            ("POST", "/whip/cam", None, {"data": "v=0", "headers": {"Content-Type": "application/sdp"}}),
            ("GET", "/metrics", c.metrics, {}), ("GET", "/healthcheck", c.metrics, {})]
        for method, path, base, kw in requests:
            headers = {**evil, **kw.pop("headers", {})}
            for token in (TOKEN, None):  # the right token does not help, and no 401 leaks either
                status, body = await c.call(method, path, token=token, base=base, headers=headers, **kw)
                assert status == 421 and "Host" in body["error"], (method, path, base, status, body)
        assert c.monitor.streams == {}
        for host in (EVIL + ":80", f"{EVIL}:{c.monitor.api_port}", "127.0.0.1.evil.example", "localhost.evil.example",
                     "127.0.0.2", "0.0.0.0", "[::2]", "a:b:c", "[::1", "local host", "%6cocalhost"):
            assert (await c.call("GET", "/streams", headers={"Host": host}))[0] == 421, host
        for host in ("127.0.0.1", f"127.0.0.1:{c.monitor.api_port}", "localhost", "LOCALHOST:1", "localhost.",
                     "[::1]", "[0:0::1]:8080"):
            assert (await c.call("GET", "/streams", headers={"Host": host}))[0] == 200, host
            assert (await c.call("GET", "/metrics", base=c.metrics, headers={"Host": host}))[0] == 200, host
        # No Host at all: HTTP/1.1 is refused by aiohttp's parser (400); HTTP/1.0, where Host is
        # optional, by the allow-list (request.host would have fallen back to the socket's address).
        for port in (c.monitor.api_port, c.monitor.metrics_port):
            status, reply = await c.raw(b"GET /healthcheck HTTP/1.1\r\nConnection: close\r\n\r\n", port)
            assert status == 400 and b"healthy" not in reply, reply
            status, reply = await c.raw(b"GET /healthcheck HTTP/1.0\r\n\r\n", port)
            assert status == 421 and b'"error"' in reply, reply
            status, _ = await c.raw(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", port)
            assert status == 200

    run(test)


def test_configured_allowed_hosts(run: Any) -> None:
    """Names, ports, networks and the bind address; '*' only when asked for."""

    async def test(c: Client) -> None:
        ok = ["monitor.internal", "monitor.internal:9999", "api.internal:8443", "10.1.2.3:8080", "[fd00::5]",
              "127.0.0.1", f"127.0.0.1:{c.monitor.api_port}"]  # the last two: the bind address, not listed
        bad = ["localhost", "[::1]", "api.internal", "api.internal:8444", "monitor.internal.evil.example",
               "11.0.0.1", "10.evil.example", EVIL]
        for host in ok:
            assert (await c.call("GET", "/streams", headers={"Host": host}))[0] == 200, host
        for host in bad:
            assert (await c.call("GET", "/streams", headers={"Host": host}))[0] == 421, host

    run(test, allowed_hosts=["monitor.internal", "api.internal:8443", "10.0.0.0/8", "fd00::/8"])

    async def anything(c: Client) -> None:
        assert (await c.call("GET", "/streams", headers={"Host": EVIL}))[0] == 200
        assert (await c.call("GET", "/streams", token=None, headers={"Host": EVIL}))[0] == 401  # the token still counts
        status, _ = await c.raw(b"GET /healthcheck HTTP/1.0\r\n\r\n")
        assert status == 421  # '*' allows any name, never a missing or malformed Host
        assert (await c.call("GET", "/healthcheck", headers={"Host": "a:b:c"}))[0] == 421

    run(anything, allowed_hosts=["*"])


def test_allow_list_parsing() -> None:
    assert split_host("[::1]:8080") == ("::1", 8080) and split_host("LocalHost.") == ("localhost", None)
    assert split_host("127.0.0.1:80") == ("127.0.0.1", 80)
    for bad in ("a:b", "a:99999", "[::1]x", "[nope]", "a b", "", ":80", "a:"):
        with pytest.raises(ValueError):
            split_host(bad)
    for entry in ("*", "localhost", "[::1]", "::1", "10.0.0.0/8", "fd00::/8", "svc_name:9108", "a.b.c"):
        parse_entry(entry)
    for bad in ("http://x", "x/y", "a b", "[::1]:x", "10.0.0.0/33", "[fd00::]/8", ""):
        with pytest.raises(ValueError, match="allowed_hosts entry"):
            parse_entry(bad)
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load_config(overrides={"api": {"allowed_hosts": ["http://evil"]}}, environ={})
    # The bind address joins the list when it names one; a wildcard bind adds nothing.
    assert HostAllowList.for_listener([], "10.9.8.7").allows("10.9.8.7:8080")
    assert HostAllowList.for_listener([], "::1").allows("[::1]:1")
    assert not HostAllowList.for_listener([], "0.0.0.0").allows("0.0.0.0")
    assert not HostAllowList.for_listener([], "::").allows("[::]")
    assert HostAllowList.for_listener(["localhost"], "").entries == ["localhost"]


# ---------------------------------------------------------------- tokens

def test_tokens_in_urls_and_undecodable_tokens(run: Any) -> None:
    async def test(c: Client) -> None:
        q = f"access_token={TOKEN}"
        # ?access_token= opens only the page's two live feeds (GET/HEAD) ...
        assert QUERY_TOKEN_ROUTES == {"/events", "/streams/{id}/live.mjpeg"}
        assert (await asyncio.wait_for(c.call("HEAD", f"/events?{q}", token=None), 5))[0] == 200
        assert (await c.call("GET", f"/streams/nope/live.mjpeg?{q}", token=None))[0] == 404  # past auth
        assert (await c.call("HEAD", "/events?access_token=wrong", token=None))[0] == 401
        # ... and nothing else, reading or writing.
        for method, path in [("GET", "/streams"), ("GET", "/streams/nope"), ("GET", "/readyz"), ("GET", "/whip/cam"),
                             ("HEAD", "/streams"), ("POST", "/streams"), ("DELETE", "/streams/nope"),
                             ("POST", "/predict"), ("OPTIONS", "/whip/cam"), ("GET", "/events/x"),
                             ("GET", "/streams/a/b/live.mjpeg"), ("GET", "/alerts"), ("HEAD", "/alerts"),
                             ("GET", "/evidence/abc-0-frame.jpg")]:
            status, _ = await c.call(method, f"{path}?{q}", token=None)
            assert status in (401, 405) and status != 200, (method, path, status)
            if status == 405:  # aiohttp's router answers unknown methods first: still no access
                assert method not in ("GET", "HEAD"), (method, path)
        assert (await c.call("GET", "/streams"))[0] == 200  # the header works there

        # A token that is not valid text is a wrong token: 401, never a 500 with a traceback.
        for header in (b"Bearer \xff\xfe\xfd", b"Bearer caf\xc3\xa9", b"Bearer " + TOKEN.encode() + b"\x80",
                       b"Bearer \xed\xa0\x80"):
            status, reply = await c.raw(b"GET /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + header
                                        + b"\r\nConnection: close\r\n\r\n")
            assert status == 401 and b"bearer token" in reply, (header, reply[:200])
        for query in ("%FF%FE", "caf%C3%A9", "%ED%A0%80", TOKEN + "%80", "\u00e9"):
            status, _ = await c.call("HEAD", f"/events?access_token={query}", token=None)
            assert status == 401, query
            status, _ = await c.call("GET", f"/streams/nope/live.mjpeg?access_token={query}", token=None)
            assert status == 401, query
        assert (await c.call("GET", "/streams", token="caf\u00e9"))[0] == 401
        assert (await c.call("GET", "/streams"))[0] == 200  # the server is fine afterwards

    run(test)


def test_non_ascii_configured_token(run: Any) -> None:
    """A token with non-ASCII characters (UTF-8 on the wire) works and is compared as bytes."""

    async def test(c: Client) -> None:
        good = "caf\u00e9-token".encode()
        status, _ = await c.raw(b"GET /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + good
                                + b"\r\nConnection: close\r\n\r\n")
        assert status == 200
        status, _ = await c.raw(b"GET /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer caf\xe9-token"
                                b"\r\nConnection: close\r\n\r\n")  # the Latin-1 byte is not the UTF-8 token
        assert status == 401

    async def main() -> None:
        overrides = small_config(detectors={"enabled": ["caddm"]}, api={"port": 0, "token": "caf\u00e9-token"},
                                 alerts={"stdout": False})
        monitor = Service(load_config(overrides=overrides, environ={}))
        await monitor.start()
        try:
            async with aiohttp.ClientSession() as s:
                await test(Client(s, monitor))
        finally:
            await monitor.stop(grace=2.0)

    asyncio.run(main())


# ---------------------------------------------------------------- bodies and ids

def test_ids_and_bodies(run: Any, tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        # A trailing newline (re.match with "$" took it) and other near misses: 400, nothing started.
        for bad in ("nl\n", "nl\r\n", "a\nb", "\nnl", "-a", "a" * 65, "", "a/b", "caf\u00e9", 5, None):
            status, body = await c.call("POST", "/streams", json={"id": bad, "url": "synthetic:"})
            assert status == 400 and "'id'" in body["error"], (bad, status, body)
        for raw in ("nl%0A", "nl%0D%0A", "-a", "a%00"):
            status, body = await c.call("POST", f"/whip/{raw}", data="v=0\r\n",
                                        headers={"Content-Type": "application/sdp"})
            assert status == 400 and "stream id" in body["error"], (raw, status, body)
        assert c.monitor.streams == {}

        # JSON nested past the recursion limit, or just past 32 levels: 400, not 500.
        form = {"Content-Type": "application/json"}
        for path in ("/streams", "/predict"):
            for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                         '{"id": "a", "url": "synthetic:", "x": ' + "[" * 40 + "]" * 40 + "}"):
                status, body = await c.call("POST", path, data=text, headers=form)
                assert status == 400 and body["error"], (path, text[:20], status, body)
            status, body = await c.call("POST", path, data='{"x": ' + "[" * 100 + "]" * 100 + "}", headers=form)
            assert status == 400 and "deeper than 32" in body["error"], body
        # 31 levels inside the object are fine (the refusal is for something else).
        status, body = await c.call("POST", "/streams", data='{"x": ' + "[" * 31 + "]" * 31 + "}", headers=form)
        assert status == 400 and "unknown fields" in body["error"] or "'id'" in body["error"], body

        # What held before: cross-site form posts are 415, more than 1 MiB is 413, no token is 401.
        for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"):
            status, _ = await c.call("POST", "/streams", data="id=a&url=synthetic:", headers={"Content-Type": ctype})
            assert status == 415, ctype
        status, _ = await c.call("POST", "/streams", data=b"{" + b" " * (2 << 20) + b"}", headers=form)
        assert status == 413
        assert (await c.call("POST", "/streams", token=None, json={"id": "a", "url": "synthetic:"}))[0] == 401
        assert c.monitor.streams == {}
        status, page = await c.call("GET", "/", token=None)
        assert status == 200 and "<html" in page.lower()
        async with c.s.get(c.api + "/") as r:
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]

        # A valid id still works.
        status, body = await c.call("POST", "/streams", json={"id": "ok.cam-1", "url": "synthetic:?fps=5"})
        assert status == 201 and body["id"] == "ok.cam-1"

    run(test)


def test_config_stream_ids_use_the_same_rule() -> None:
    for bad in ("nl\n", "-a", "a" * 65, "a b"):
        with pytest.raises(ConfigError, match="streams.0.id"):
            load_config(overrides={"streams": [{"id": bad, "url": "synthetic:"}]}, environ={})
    load_config(overrides={"streams": [{"id": "a" * 64, "url": "synthetic:"}]}, environ={})


# ---------------------------------------------------------------- redaction and logs

def test_redact_userinfo_and_secret_query_parameters() -> None:
    cases = {
        "rtsp://admin:hunter2@cam.local:554/live?apikey=K1&channel=2":
            "rtsp://admin:***@cam.local:554/live?apikey=***&channel=2",
        "https://cdn.example/v.m3u8?X-Amz-Credential=C&X-Amz-Signature=S&X-Amz-Expires=60":
            "https://cdn.example/v.m3u8?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        "http://h/x?access_token=T&Api-Key=A&PASSWORD=P&pwd=W&sig=G&session_id=S&auth=U&fps=5#token=F":
            "http://h/x?access_token=***&Api-Key=***&PASSWORD=***&pwd=***&sig=***&session_id=***&auth=***&fps=5"
            "#token=***",
        "http://h/x?client%5Fsecret=Z&keyframe=1&token=": "http://h/x?client%5Fsecret=***&keyframe=1&token=",
        "rtsp://u:p@h:99999/x?pass=1": "rtsp://***@h:99999/x?pass=***",
        "rediss://stream-monitor:pw@redis:6380/0?ssl_cert_reqs=required":
            "rediss://stream-monitor:***@redis:6380/0?ssl_cert_reqs=required",
        "synthetic:astronaut?fps=5&size=240x180": "synthetic:astronaut?fps=5&size=240x180",
        "/videos/a.mp4": "/videos/a.mp4",
        "rtsp://cam/x\r\n2026-01-01 INFO forged line": "rtsp://cam/x%0D%0A2026-01-01 INFO forged line",
    }
    for url, shown in cases.items():
        assert redact(url) == shown, url
    for name in ("token", "ACCESS-TOKEN", "api.key", "x-api-key", "apiKey", "Signature", "credential", "passphrase"):
        assert is_secret_param(name), name
    for name in ("fps", "size", "channel", "keyframe", "transport", "expires"):
        assert not is_secret_param(name), name


def test_secrets_and_control_characters_stay_out_of_logs_and_the_api(run: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A camera URL with a password and an ?apikey=, to a closed loopback port: the API and
    every log line show them as ***; a URL with CR LF cannot start a new log line."""
    caplog.set_level(logging.DEBUG)
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused at once

        async def test(c: Client) -> None:
            url = f"rtsp://admin:hunter2@127.0.0.1:{port}/live?apikey=K3Y&channel=2"
            status, body = await c.call("POST", "/streams", json={"id": "cam", "url": url})
            assert status == 201, body
            assert body["url"] == f"rtsp://admin:***@127.0.0.1:{port}/live?apikey=***&channel=2"
            forged = f"rtsp://127.0.0.1:{port}/x\r\n2026-01-01 00:00:00 INFO forged"
            status, body = await c.call("POST", "/streams", json={"id": "cam2", "url": forged})
            # Refused outright (the URL policy), and the refusal itself echoes no raw line break.
            assert status == 400 and "\n" not in body["error"] and "\r" not in body["error"], body
            for _ in range(100):
                listing = (await c.call("GET", "/streams"))[1]["streams"]
                if all(s["reconnects"] >= 1 or s["last_error"] for s in listing):
                    break
                await asyncio.sleep(0.05)
            text = repr(listing)
            assert "hunter2" not in text and "K3Y" not in text and "\\r\\n" not in text, text

        run(test, source_hosts=["127.0.0.1"])  # the camera is on loopback here
    logged = [r.getMessage() for r in caplog.records]
    assert any("cam" in m for m in logged)
    for message in logged:
        assert "hunter2" not in message and "K3Y" not in message, message
        assert "\n" not in message and "\r" not in message, message
