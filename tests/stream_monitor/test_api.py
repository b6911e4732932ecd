"""The HTTP API over real HTTP on loopback: health, auth, streams, predict, bad input."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream_monitor.service import Service
from stream_monitor.config import load_config
from tests.support import api as support_api
from tests.support.small import small_config

TOKEN = "s3cret-token"


class SilentListener:
    """A TCP listener on loopback that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


async def _monitor(tmp_path: Path, **sections: Any) -> Service:
    overrides = small_config(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2,
                                                                        "window_stride": 2}},
                             api={"port": 0, "token": TOKEN, "predict_roots": [str(tmp_path / "videos")],
                                  "predict_hosts": ["allowed.example"]},
                             alerts={"stdout": False}, **sections)
    monitor = Service(load_config(overrides=overrides, environ={}))
    await monitor.start()
    return monitor


class Api(support_api.Api):
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        super().__init__(session, port, TOKEN)


@pytest.fixture
def videos(tmp_path: Path, face_video: Path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    (d / "face.mp4").write_bytes(face_video.read_bytes())
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    return d


def test_health_auth_and_streams(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await _monitor(tmp_path)
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0)
                assert await api.call("GET", "/healthcheck", token=None) == (200, {"healthy": True})
                status, text = await api.call("GET", "/metrics", token=None)
                assert status == 200 and "stream_monitor_frames_received_total" in text
                assert (await api.call("GET", "/streams", token=None))[0] == 401
                status, body = await api.call("GET", "/streams", token="wrong")
                assert status == 401 and "token" in body["error"]
                assert await api.call("GET", "/readyz") == (200, {"ready": True})
                assert await api.call("GET", "/streams") == (200, {"streams": []})

                # Bad bodies: each a 4xx with a JSON error, nothing started.
                for kwargs, want in [({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400), ({"json": [1, 2]}, 400),
                                     ({"json": {"id": "a"}}, 400), ({"json": {"id": "bad id!", "url": "synthetic:"}}, 400),
                                     ({"json": {"id": "a", "url": "ftp://x/y"}}, 400),
                                     ({"json": {"id": "a", "url": "synthetic:", "extra": 1}}, 400),
                                     ({"data": "x", "headers": {"Content-Type": "text/plain"}}, 415)]:
                    status, body = await api.call("POST", "/streams", **kwargs)
                    assert status == want and isinstance(body, dict) and body["error"], (kwargs, status, body)
                assert monitor.streams == {}

                status, body = await api.call("POST", "/streams", json={"id": "synth", "url": "synthetic:?fps=10"})
                assert status == 201 and body["id"] == "synth"
                assert (await api.call("POST", "/streams", json={"id": "synth", "url": "synthetic:"}))[0] == 409
                for _ in range(100):
                    status, body = await api.call("GET", "/streams/synth")
                    if body["frames_analysed"] >= 5:
                        break
                    await asyncio.sleep(0.1)
                assert status == 200 and body["state"] == "up" and body["frames_analysed"] >= 5
                assert body["faces"] >= 1 and "fps" in body and "reconnects" in body
                listing = (await api.call("GET", "/streams"))[1]["streams"]
                assert [s["id"] for s in listing] == ["synth"]
                deleted = await api.call("DELETE", "/streams/synth")
                assert deleted[0] == 204, deleted
                assert (await api.call("DELETE", "/streams/synth"))[0] == 404
                assert (await api.call("GET", "/streams/synth"))[0] == 404
                status, body = await api.call("PUT", "/streams")
                assert status == 405 and body["error"]
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_readyz_reports_an_unreachable_redis(tmp_path: Path) -> None:
    async def main() -> tuple[int, Any]:
        monitor = await _monitor(tmp_path, redis={"url": "redis://127.0.0.1:9/0"})
        try:
            async with aiohttp.ClientSession() as s:
                return await Api(s, monitor.api_port or 0).call("GET", "/readyz")
        finally:
            await monitor.stop(grace=0.5)

    status, body = asyncio.run(main())
    assert status == 503 and body["ready"] is False and "redis" in body["reasons"][0]


def test_predict(tmp_path: Path, videos: Path) -> None:
    listener = SilentListener()

    async def main() -> None:
        monitor = await _monitor(tmp_path)
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0)
                status, body = await api.call("POST", "/predict", json={"file_path": str(videos / "face.mp4")})
                assert status == 200, body
                assert set(body) >= {"file_path", "fake_probability", "label", "detectors", "frames", "faces"}
                assert body["frames"] == 100 and body["faces"] >= 90
                assert 0.0 <= body["fake_probability"] <= 1.0 and body["label"] in ("FAKE", "REAL")
                assert set(body["detectors"]) == {"caddm"}

                outside = tmp_path / "secret.mp4"
                outside.write_bytes(b"x")
                link = videos / "link.mp4"
                link.symlink_to(outside)
                for target, want in [(str(outside), 403), (str(link), 403), (str(videos / "../secret.mp4"), 403),
                                     (str(videos / "absent.mp4"), 400), (str(videos / "broken.mp4"), 422),
                                     (f"http://127.0.0.1:{listener.port}/v.mp4", 403),
                                     ("ftp://allowed.example/v.mp4", 403), ("", 400)]:
                    status, body = await api.call("POST", "/predict", json={"file_path": target})
                    assert status == want and body["error"], (target, status, body)
                assert (await api.call("POST", "/predict", json={"path": "x"}))[0] == 400
                assert (await api.call("POST", "/predict", data="[]",
                                       headers={"Content-Type": "application/json"}))[0] == 400
        finally:
            await monitor.stop()

    try:
        asyncio.run(main())
    finally:
        listener.close()
    assert listener.connections == 0, "a refused URL must not be connected to"
