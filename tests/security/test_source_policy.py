"""The URL policy attacked through a real API on loopback (issue 11, part 1).

Every refused URL names a host that a :class:`~tests.support.listeners.RecordingListener`
listens on (127.0.0.2, 127.0.0.3), or redirects or points to one: the listener must see no
connection. The API's allowed camera host is 127.0.0.1 (``api.source_hosts: ["127.0.0.1"]``),
where the test servers run; a real Redis there must see no command from a source URL.
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
import redis

from stream_monitor.service import Service
from stream_monitor.config import ConfigError, IngestConfig, load_config
from stream_monitor.errors import SourceError, SourceRefused
from stream_monitor.ingest import open_source
from stream_monitor.ingest.base import SOURCES
from stream_monitor.ingest.policy import PROTOCOLS, SCHEMES, HostPolicy, RootPolicy, SourceGuard, open_beneath
from stream_monitor.ingest.rtsp_relay import RelayRefused, ServerStream
from tests.support import api as support_api
from tests.support.listeners import RecordingListener
from tests.support.polling import until_async
from tests.support.servers import RedisServer
from tests.support.small import small_config

TOKEN = "policy-test-token"
Outside = tuple[RecordingListener, RecordingListener]


# ---------------------------------------------------------------- servers the tests attack with

class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: ``/video.mp4`` (byte ranges), ``/redirect?to=URL`` (302), ``/play.m3u8?seg=URL``
    (a one-segment HLS playlist), ``/seg.ts``."""

    root: Path

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        value = query.partition("=")[2]
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/play.m3u8":
            body = f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{value}\n#EXT-X-ENDLIST\n"
            self._send(body.encode(), "application/vnd.apple.mpegurl")
        elif path in ("/video.mp4", "/seg.ts"):
            self._send((self.root / path.lstrip("/")).read_bytes(), "video/mp4")
        else:
            self.send_error(404)

    def _send(self, data: bytes, content_type: str) -> None:
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged[6:].rstrip("-").isdigit():
            start = int(ranged[6:].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def web(tmp_path: Path, face_video: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (see :class:`_Handler`); yields its base URL."""
    root = tmp_path / "web"
    root.mkdir()
    (root / "video.mp4").write_bytes(face_video.read_bytes())
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(face_video), "-c", "copy", "-f", "mpegts",
                    str(root / "seg.ts")], check=True)
    handler = type("Handler", (_Handler,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RedirectingRtspServer:
    """Answers OPTIONS, then ``302`` to ``location`` for DESCRIBE (FFmpeg would follow it)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    buf += data
                    while b"\r\n\r\n" in buf:
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        lines = head.decode().split("\r\n")
                        cseq = next(x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("cseq"))
                        if lines[0].startswith("OPTIONS"):
                            reply = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: DESCRIBE, SETUP, PLAY\r\n\r\n"
                        else:
                            reply = f"RTSP/1.0 302 Moved\r\nCSeq: {cseq}\r\nLocation: {self.location}\r\n\r\n"
                        conn.sendall(reply.encode())

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- the monitor under attack

async def _monitor(tmp_path: Path, redis_url: str | None = None, **api: Any) -> Service:
    overrides = small_config(detectors={"enabled": ["caddm"]}, alerts={"stdout": False},
                             ingest={"open_timeout_s": 3, "read_timeout_s": 3, "realtime": False},
                             api={"port": 0, "token": TOKEN, "source_hosts": ["127.0.0.1"], **api},
                             redis={"url": redis_url})
    monitor = Service(load_config(overrides=overrides, environ={}))
    await monitor.start()
    return monitor


class Api(support_api.Api):
    async def ended_with(self, stream_id: str, timeout: float = 20.0) -> str:
        """The ``last_error`` of a stream once it has ended."""
        async def ended() -> bool:
            status, body = await self.call("GET", f"/streams/{stream_id}")
            return status == 200 and body["state"] == "ended"
        await until_async(ended, timeout, f"stream {stream_id} ended")
        body = (await self.call("GET", f"/streams/{stream_id}"))[1]
        return str(body["last_error"])


def _attack(tmp_path: Path, attack: Any, redis_url: str | None = None, **api: Any) -> None:
    async def main() -> None:
        monitor = await _monitor(tmp_path, redis_url, **api)
        try:
            async with aiohttp.ClientSession() as session:
                await attack(Api(session, monitor.api_port or 0, TOKEN))
        finally:
            await monitor.stop(grace=5)
    asyncio.run(main())


def _no_connections(*listeners: RecordingListener) -> None:
    for listener in listeners:
        assert listener.connections == [], f"{listener.address} was reached: {listener.connections}"


# ---------------------------------------------------------------- URL text: CR LF and friends

def test_crlf_and_control_characters_are_refused_everywhere(tmp_path: Path, outside: Outside,
                                                            redis_server: RedisServer) -> None:
    two, three = outside
    redis_port = redis_server.port
    injected = [f"rtsp://127.0.0.1:{redis_port}/x\r\nSET pwned 1\r\nQUIT\r\n",
                f"rtsp://{two.address}/x\r\nSET pwned 1\r\n",
                f"http://{three.address}/a\nb.mp4", f"rtsp://{two.address}/a\tb", f"rtsp://{two.address}/a b",
                f"rtsp://{two.address}/\x00", f"rtsp://{two.address}/\u2028x"]
    before = _redis_stats(redis_port)

    async def attack(api: Api) -> None:
        for url in injected:
            status, body = await api.call("POST", "/streams", json={"id": "cam", "url": url})
            assert status == 400 and ("control characters" in body["error"] or "whitespace" in body["error"]), body
            status, body = await api.call("POST", "/predict", json={"file_path": url})
            assert status in (400, 403), body
        # Not even the redis port without CR LF: the Redis endpoint is never a source.
        status, body = await api.call("POST", "/streams", json={"id": "cam", "url": f"rtsp://127.0.0.1:{redis_port}/x"})
        assert status == 403 and "not allowed by api.source_hosts" in body["error"]
        assert (await api.call("GET", "/streams"))[1]["streams"] == []

    _attack(tmp_path, attack, redis_server.url)
    # The config file and the command line refuse them too (trusted for hosts, not for text).
    with pytest.raises(ConfigError, match="control characters"):
        load_config(overrides={"streams": [{"id": "cam", "url": injected[0]}]}, environ={})
    run = subprocess.run([sys.executable, "-m", "stream_monitor", "run", injected[1], "--random-weights"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 2 and "control characters" in run.stderr and "Traceback" not in run.stderr, run.stderr
    after = _redis_stats(redis_port)
    assert after["keys"] == before["keys"] == 0
    # No request line ever reached Redis as a command (RESP-less inline commands included).
    assert not {"cmdstat_set", "cmdstat_quit", "cmdstat_options", "cmdstat_describe"} & after["commands"], after
    _no_connections(two, three)


def _redis_stats(port: int) -> dict[str, Any]:
    """Keys in db 0 and the names of the commands Redis has run (``INFO commandstats``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"DBSIZE\r\nINFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or data.count(b"\r\n") < 3:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.decode()
    keys = int(text.split("\r\n", 1)[0].lstrip(":"))
    commands = {line.split(":", 1)[0] for line in text.splitlines() if line.startswith("cmdstat_")}
    return {"keys": keys, "commands": commands}


# ---------------------------------------------------------------- hosts

def test_hosts_outside_source_hosts_are_refused_before_any_connection(tmp_path: Path, outside: Outside) -> None:
    two, three = outside

    async def attack(api: Api) -> None:
        for url in [f"rtsp://{two.address}/cam", f"rtsps://{three.address}/cam", f"http://{two.address}/v.mp4",
                    f"https://{three.address}/v.m3u8", f"http://[::ffff:127.0.0.2]:{two.port}/v.mp4",
                    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/",
                    "http://100.100.100.200/latest/meta-data/", f"http://0.0.0.0:{two.port}/x"]:
            status, body = await api.call("POST", "/streams", json={"id": "cam", "url": url})
            assert status == 403, (url, status, body)
            assert body["error"].endswith("not allowed by api.source_hosts"), body
            # /predict lists no hosts at all by default.
            status, body = await api.call("POST", "/predict", json={"file_path": url})
            assert status == 403 and "api.predict_hosts" in body["error"], (url, body)
        assert (await api.call("GET", "/streams"))[1]["streams"] == []

    _attack(tmp_path, attack)
    _no_connections(two, three)


def test_host_policy_rules() -> None:
    fixed = {"cam.example": ["10.1.2.3"], "both.example": ["10.1.2.3", "127.0.0.1"], "redis.example": ["10.9.9.9"]}

    def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(a) for a in fixed.get(host, [host])]

    default = HostPolicy(["*"], "api.source_hosts", [("redis.example", 6379)], resolver=resolver)
    assert default.check("rtsp://cam.example/x")
    for url in ["rtsp://both.example/x", "rtsp://127.0.0.1/x", "rtsp://169.254.169.254/x",
                "rtsp://[::ffff:169.254.169.254]/x", "rtsp://[64:ff9b::7f00:1]/x", "rtsp://10.9.9.9:6379/x"]:
        with pytest.raises(SourceRefused, match="not allowed by api.source_hosts"):
            default.check(url)
    assert default.check("rtsp://10.9.9.9:554/x")  # the Redis host's other ports are cameras' business
    narrow = HostPolicy(["10.0.0.0/8", "*.cams.example", "127.0.0.1", "0.0.0.0/0"], "api.source_hosts",
                        [("127.0.0.1", 6379)], resolver=resolver)
    assert narrow.check("rtsp://127.0.0.1:8554/x")  # explicit loopback entry: a local camera proxy
    for url in ["rtsp://127.0.0.1:6379/x", "rtsp://127.0.0.2/x", "rtsp://169.254.169.254/x"]:
        with pytest.raises(SourceRefused):
            narrow.check(url)  # Redis never; 0.0.0.0/0 does not reach special ranges
    with pytest.raises(SourceRefused):  # a name for this host, resolved for real
        HostPolicy(["*"], "api.source_hosts").check("rtsp://localhost/x")
    names = HostPolicy(["*.cams.example"], "api.source_hosts", resolver=resolver)
    with pytest.raises(SourceRefused):
        names.check("rtsp://cam.example/x")


# ---------------------------------------------------------------- redirects, playlists, RTSP

def test_http_redirect_and_hls_segments_to_other_hosts_are_refused(tmp_path: Path, web: str,
                                                                   outside: Outside) -> None:
    two, three = outside
    secret = tmp_path / "web" / "seg.ts"  # a playable segment, but a local file: no roots are configured

    async def attack(api: Api) -> None:
        cases = {"redir": f"{web}/redirect?to=http://{two.address}/v.mp4",
                 "redir2": f"{web}/redirect?to={web}/redirect?to=http://{three.address}/v.mp4",
                 "hls": f"{web}/play.m3u8?seg=http://{three.address}/seg.ts",
                 "hlsfile": f"{web}/play.m3u8?seg=file://{secret}"}
        for stream_id, url in cases.items():
            status, body = await api.call("POST", "/streams", json={"id": stream_id, "url": url})
            assert status == 201, body  # the first host is allowed; what it points to is not
        for stream_id in cases:
            error = await api.ended_with(stream_id)
            assert "not allowed by api.source" in error, (stream_id, error)
        # The same through /predict (its hosts list 127.0.0.1 here).
        status, body = await api.call("POST", "/predict", json={"file_path": cases["hls"]})
        assert status == 403 and "not allowed by api.predict_hosts" in body["error"], body

    _attack(tmp_path, attack, predict_hosts=["127.0.0.1"])
    _no_connections(two, three)


def test_allowed_http_sources_play_through_the_guard(tmp_path: Path, web: str) -> None:
    """The guard is not a wall: an allowed MP4 (moov at the end: ranged seeks), a redirect within
    the allowed hosts and an HLS playlist all decode."""
    guard = SourceGuard(HostPolicy(["127.0.0.1"], "api.source_hosts"), RootPolicy([], "api.source_roots"), 5.0)
    cfg = IngestConfig(realtime=False, open_timeout_s=5, read_timeout_s=5)
    for url in [f"{web}/video.mp4", f"{web}/redirect?to={web}/video.mp4", f"{web}/play.m3u8?seg={web}/seg.ts"]:
        frames = list(open_source("h", url, cfg, guard).frames())
        assert len(frames) == 100 and frames[0].image.shape == (240, 320, 3), (url, len(frames))


def test_trusted_sources_keep_to_their_protocol(web: str) -> None:
    """An operator's HTTP playlist cannot make FFmpeg read a local file (protocol whitelist),
    while the same segment over HTTP plays."""
    cfg = IngestConfig(realtime=False, open_timeout_s=5, read_timeout_s=5)
    seg = Path(__file__)  # any readable local file: FFmpeg must not even open it
    with pytest.raises(SourceError):
        list(open_source("h", f"{web}/play.m3u8?seg=file://{seg}", cfg).frames())
    assert len(list(open_source("h", f"{web}/play.m3u8?seg={web}/seg.ts", cfg).frames())) == 100
    assert set(PROTOCOLS) == SCHEMES - {"synthetic"} and set(SOURCES) == SCHEMES


def test_rtsp_redirects_are_refused(tmp_path: Path, outside: Outside) -> None:
    two, _ = outside
    server = RedirectingRtspServer(f"rtsp://{two.address}/x")

    async def attack(api: Api) -> None:
        url = f"rtsp://127.0.0.1:{server.port}/cam"
        assert (await api.call("POST", "/streams", json={"id": "cam", "url": url}))[0] == 201
        error = await api.ended_with("cam")
        assert "redirect" in error, error

    try:
        _attack(tmp_path, attack)
    finally:
        server.close()
    _no_connections(two)


def test_allowed_rtsp_plays_through_the_relay(tmp_path: Path, rtsp_server: Any) -> None:
    async def attack(api: Api) -> None:
        assert (await api.call("POST", "/streams", json={"id": "cam", "url": rtsp_server.url("/face")}))[0] == 201

        async def frames() -> bool:
            body = (await api.call("GET", "/streams/cam"))[1]
            return body["state"] == "up" and body["frames"] >= 10
        await until_async(frames, 30, "frames through the RTSP relay")

    _attack(tmp_path, attack)


def test_relay_parser() -> None:
    stream = ServerStream()
    ok = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 4\r\n\r\nv=0\n"
    frame = b"$\x00\x00\x03abc"
    assert stream.feed(ok[:10]) == b"" and stream.feed(ok[10:] + frame[:2]) == ok
    assert stream.feed(frame[2:]) == frame
    for bad in [b"RTSP/1.0 301 Moved\r\nCSeq: 3\r\nLocation: rtsp://x/\r\n\r\n",
                b"REDIRECT rtsp://a/ RTSP/1.0\r\nCSeq: 1\r\n\r\n",
                b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nlocation: rtsp://x/\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                b"\x00\x01garbage"]:
        with pytest.raises(RelayRefused):
            ServerStream().feed(bad)


# ---------------------------------------------------------------- local files

def test_files_only_under_source_roots(tmp_path: Path, face_video: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "face.mp4").write_bytes(face_video.read_bytes())
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(face_video.read_bytes())
    (videos / "link.mp4").symlink_to(secret)

    async def attack(api: Api) -> None:
        refused = {}
        for url in [str(secret), str(tmp_path / "absent.mp4"), str(videos / "link.mp4"),
                    str(videos / ".." / "secret.mp4"), secret.as_uri(), "/etc/hostname", "file://localhost/etc/shadow"]:
            status, body = await api.call("POST", "/streams", json={"id": "f", "url": url})
            assert status == 403 and body["error"] == f"{url!r}: not allowed by api.source_roots", (url, body)
            refused[url] = body["error"].replace(repr(url), "URL")
        assert len(set(refused.values())) == 1  # one answer whether the file exists or not
        status, body = await api.call("POST", "/streams", json={"id": "f", "url": str(videos / "absent.mp4")})
        assert status == 400 and "no such file" in body["error"]
        assert (await api.call("POST", "/streams", json={"id": "f", "url": str(videos / "face.mp4")}))[0] == 201
        assert await api.ended_with("f") == "None"
        body = (await api.call("GET", "/streams/f"))[1]
        assert body["frames"] == 100 and body["last_error"] is None, body

    _attack(tmp_path, attack, source_roots=[str(videos)])


def test_a_link_swapped_in_after_the_check_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cams").mkdir(parents=True)
    (root / "cams" / "a.mp4").write_bytes(b"video")
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    (outside_dir / "a.mp4").write_bytes(b"secret")
    policy = RootPolicy([root], "api.source_roots")
    real_root, path = policy.resolve(str(root / "cams" / "a.mp4"))
    # Swap a directory for a link to elsewhere between the check and the open.
    (root / "cams").rename(root / "old")
    (root / "cams").symlink_to(outside_dir)
    with pytest.raises(SourceRefused, match="not allowed by api.source_roots"):
        open_beneath(real_root, path, str(path), policy)
    # And the file itself swapped for a link.
    (root / "cams").unlink()
    (root / "old").rename(root / "cams")
    (root / "cams" / "a.mp4").unlink()
    (root / "cams" / "a.mp4").symlink_to(outside_dir / "a.mp4")
    with pytest.raises(SourceRefused):
        open_beneath(real_root, path, str(path), policy)
    (root / "cams" / "a.mp4").unlink()
    (root / "cams" / "a.mp4").write_bytes(b"video")
    with os.fdopen(open_beneath(real_root, path, str(path), policy), "rb") as f:
        assert f.read() == b"video"


# ---------------------------------------------------------------- the fleet's desired set

def test_fleet_desired_streams_are_checked_like_the_api(tmp_path: Path, outside: Outside,
                                                       redis_server: RedisServer) -> None:
    """An entry written straight into Redis (by anyone who can write there) is not trusted:
    the claiming worker refuses it before connecting and it leaves the desired set."""
    two, three = outside
    overrides = small_config(worker_name="w1", detectors={"enabled": ["caddm"]}, alerts={"stdout": False},
                             api={"port": 0, "source_hosts": ["127.0.0.1"]}, redis={"url": redis_server.url},
                             fleet={"enabled": True, "lease_ttl_s": 1.5, "tick_s": 0.25,
                                    "journal": str(tmp_path / "w1.jsonl")})
    client = redis.Redis.from_url(redis_server.url)

    async def main() -> None:
        monitor = Service(load_config(overrides=overrides, environ={}))
        await monitor.start()
        try:
            for stream_id, url in [("a", f"rtsp://{two.address}/cam"), ("b", f"http://{three.address}/v.mp4"),
                                   ("c", str(tmp_path / "w1.jsonl"))]:
                client.hset("deepfake:streams", stream_id, json.dumps({"url": url, "added_at": 0, "added_by": "x"}))

            async def gone() -> bool:
                return client.hlen("deepfake:streams") == 0
            await until_async(gone, 15, "refused desired streams left the desired set")
        finally:
            await monitor.stop(grace=5)

    try:
        asyncio.run(main())
    finally:
        client.close()
    records = [json.loads(line) for line in (tmp_path / "w1.jsonl").read_text().splitlines()]
    refused = {r["stream"] for r in records if r["event"] == "ended" and "not allowed by" in (r["reason"] or "")}
    assert refused == {"a", "b", "c"}, records
    _no_connections(two, three)
