"""WHIP ingest over real WebRTC on loopback: aiortc publishers of the synthetic face, VP8 and
H.264, through faces → windows → detectors → alerts; the status codes of bad requests; and
publishers that leave without DELETE while another stream keeps running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.api.whip import WHIP_SESSIONS
from stream_monitor.api.whip_sessions import WhipSessions
from stream_monitor.service import Service
from stream_monitor.config import ConfigError, load_config
from stream_monitor.ingest.sdp import BadOffer, check_offer, filter_candidates, sections
from tests.support.schema import check_schema
from tests.support.polling import sample, until
from tests.support.small import small_config
from tests.support.whip_client import Publisher, loopback_only

TOKEN = "whip-token"


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_only(monkeypatch)


async def _monitor(tmp_path: Path, **sections: Any) -> Service:
    overrides = small_config(
        detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}},
        api={"port": 0, "token": TOKEN}, alerts={"threshold": 0.0, "start_after": 1, "stdout": False,
                                                   "jsonl": str(tmp_path / "alerts.jsonl")},
        **sections)
    monitor = Service(load_config(overrides=overrides, environ={}))
    await monitor.start()
    return monitor


class Alerts:
    """Alert events from ``monitor.broadcast``, collected as they are published."""

    def __init__(self, monitor: Service) -> None:
        self.queue = monitor.broadcast.subscribe()
        self.events: list[dict[str, Any]] = []

    def collect(self) -> list[dict[str, Any]]:
        while not self.queue.empty():
            event: AlertEvent = self.queue.get_nowait()
            self.events.append(event.payload)
        return self.events

    def of(self, stream_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.collect() if e["stream_id"] == stream_id and (kind is None or e["event"] == kind)]

    def open_incidents(self, stream_id: str) -> set[str]:
        events = self.of(stream_id)
        return {e["alert_id"] for e in events if e["event"] == "start"} - \
            {e["alert_id"] for e in events if e["event"] == "end"}


def _sessions(monitor: Service) -> WhipSessions:
    return monitor._runners[0].app[WHIP_SESSIONS]  # the API app is the first server the monitor starts


def _server_pc(sessions: WhipSessions, pub: Publisher) -> RTCPeerConnection:
    """The server's peer connection of ``pub``'s session (which must be running)."""
    session = sessions.get(pub.stream_id, str(pub.location).rsplit("/", 1)[1])
    assert session is not None, f"no session for {pub.location}"
    return session.pc


def _base(monitor: Service) -> str:
    return f"http://127.0.0.1:{monitor.api_port}"


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.json() if resp.content_type == "application/json" else await resp.text()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_publish_detect_alert_and_delete(tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        monitor = await _monitor(tmp_path, webrtc={"allowed_candidate_networks": ["127.0.0.1/32"]})
        alerts = Alerts(monitor)
        sessions = _sessions(monitor)
        try:
            async with aiohttp.ClientSession() as http:
                pub = Publisher(http, _base(monitor), "cam", TOKEN, codec=codec, audio=True)
                # A candidate outside webrtc.allowed_candidate_networks beside the real ones: the
                # server must drop it and never try to reach it. (It is on loopback all the same,
                # so a regression here cannot send a packet off this machine.)
                offer = (await pub.offer()).replace(
                    "a=end-of-candidates", "a=candidate:9 1 udp 2122260223 127.0.0.9 50000 typ host\r\n"
                    "a=end-of-candidates", 1)
                assert "127.0.0.9" in offer
                assert await pub.post(offer) == 201, pub.body
                assert pub.headers["Content-Type"].startswith("application/sdp")
                assert pub.location is not None and pub.location.startswith("/whip/cam/")
                assert pub.headers["ETag"].startswith('"')
                answer = pub.body
                assert f" {codec}/90000" in answer, answer
                candidates = [line for line in answer.splitlines() if line.startswith("a=candidate:")]
                assert candidates and all(line.split()[4] == "127.0.0.1" for line in candidates), candidates
                # Audio is accepted (and discarded); every section is answered recvonly (RFC 9725 §4.2).
                assert [(m.kind, m.direction) for m in sections(answer)] == [("video", "recvonly"), ("audio", "recvonly")]

                handle = monitor.streams["cam"]
                stats = handle.pipeline.stats
                await until(lambda: stats.frames_analysed >= 5 and stats.windows >= 2 and bool(alerts.of("cam", "start")),
                            60, "frames analysed, windows scored and an alert from the WHIP stream")
                status = await _get(http, _base(monitor) + "/streams/cam")
                assert status["state"] == "up" and status["transport"] == "whip"
                assert status["url"] == f"whip:{pub.location.rsplit('/', 1)[1]}"
                assert status["frames"] >= 5 and status["faces"] >= 1 and status["frames_analysed"] >= 5
                assert status["last_scores"].keys() == {"caddm"}
                metrics = monitor.metrics
                assert sample(metrics, "stream_monitor_frames_received_total", stream="cam") >= 5
                assert sample(metrics, "stream_monitor_faces_detected_total", stream="cam") >= 1
                assert sample(metrics, "stream_monitor_windows_scored_total", detector="caddm") >= 2
                assert sample(metrics, "stream_monitor_alerts_total", stream="cam", event="start") >= 1
                assert sample(metrics, "stream_monitor_whip_sessions") == 1
                assert "stream_monitor_stream_up{stream=\"cam\"} 1.0" in await _get(http, _base(monitor) + "/metrics")
                # The frames are the publisher's: 320x240 at its pace, pts on its clock from 0.
                frame = handle.pipeline.last_frame
                assert frame is not None and frame.size == (320, 240) and 0.0 <= frame.pts < 60.0
                for event in alerts.of("cam"):
                    check_schema(event)
                server_pc = _server_pc(sessions, pub)
                remote = [c.ip for t in server_pc.getTransceivers()
                          for c in t.receiver.transport.transport.getRemoteCandidates()]
                assert remote and set(remote) == {"127.0.0.1"}, remote

                # The publisher leaves with DELETE: 200 once the stream has finished.
                assert await pub.delete() == 200
                assert handle.task.done() and monitor.streams["cam"].supervisor.state == "ended"
                assert not alerts.open_incidents("cam"), "every incident got its end event"
                assert alerts.of("cam", "end")
                assert server_pc.connectionState == "closed" and len(sessions) == 0
                assert sample(metrics, "stream_monitor_whip_sessions") == 0
                assert sample(metrics, "stream_monitor_stream_up", stream="cam") == 0
                assert await pub.delete() == 404
                await until(lambda: pub.pc.connectionState in ("closed", "failed"), 10, "the publisher to notice")
                await pub.close()
            jsonl = (tmp_path / "alerts.jsonl").read_text().splitlines()
            assert len(jsonl) == len(alerts.of("cam")), "every event also reached the configured sink"
        finally:
            await monitor.stop()

    asyncio.run(main())


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = TOKEN,
                **kw: Any) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    async with http.request(method, url, headers=headers, **kw) as resp:
        body: Any = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, resp.headers.copy()


def test_bad_requests_get_clear_statuses(tmp_path: Path) -> None:
    async def main() -> None:
        # Another loopback address, so the answer shows that webrtc.host_addresses is what is offered.
        monitor = await _monitor(tmp_path, webrtc={"max_sessions": 2, "retry_after_s": 7,
                                                   "host_addresses": ["127.0.0.2"]})
        try:
            async with aiohttp.ClientSession() as http:
                base = _base(monitor)
                good = Publisher(http, base, "cam", TOKEN)
                offer = await good.offer()
                sdp = {"Content-Type": "application/sdp"}

                async def post(stream_id: str, body: str | bytes, token: str | None = TOKEN,
                               headers: dict[str, str] = sdp) -> tuple[int, Any, Any]:
                    return await _call(http, "POST", f"{base}/whip/{stream_id}", token, data=body, headers=headers)

                # Authentication comes first: nothing about the offer is looked at without the token.
                for token in (None, "wrong"):
                    status, body, headers = await post("cam", offer, token=token)
                    assert status == 401 and "token" in body["error"] and "Bearer" in headers["WWW-Authenticate"]
                for ctype in ("application/json", "text/plain", "application/trickle-ice-sdpfrag"):
                    status, body, headers = await post("cam", offer, headers={"Content-Type": ctype})
                    assert status == 415 and "application/sdp" in body["error"], (ctype, status, body)
                    assert headers["Accept-Post"] == "application/sdp"
                status, body, _ = await post("cam", offer, headers={})
                assert status == 415
                audio_publisher = Publisher(http, base, "cam", TOKEN, video=False, audio=True)
                audio_only = await audio_publisher.offer()
                await audio_publisher.close()
                bad_offers = {
                    "garbage": "not an SDP offer",
                    "": "not an SDP offer",
                    "v=0\r\nthis is not sdp\r\n": "line 2",
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n": "no media section",
                    audio_only: "sends no video",
                    offer.replace("a=sendonly", "a=recvonly"): "sends no video",
                    offer.replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000"): "no supported video codec",
                    "\n".join(line for line in offer.splitlines() if not line.startswith("a=ice-")): "refused",
                }
                for bad, reason in bad_offers.items():
                    status, body, _ = await post("cam", bad)
                    assert status == 400 and reason in body["error"], (bad[:40], status, body)
                status, body, _ = await post("cam", b"v=0\r\n\xff\xfe")
                assert status == 400 and "UTF-8" in body["error"]
                status, body, _ = await post("cam", offer + "a=x\r\n" * 300_000)  # > api.max_body_bytes
                assert status == 413 and body["error"]
                status, body, _ = await post("bad%20id!", offer)
                assert status == 400 and "stream id" in body["error"]
                assert monitor.streams == {} and sample(monitor.metrics, "stream_monitor_whip_sessions") == 0

                # The protocol's other methods.
                status, body, headers = await _call(http, "OPTIONS", f"{base}/whip/cam")
                assert status == 200 and headers["Accept-Post"] == "application/sdp" and "POST" in headers["Allow"]
                assert (await _call(http, "GET", f"{base}/whip/cam"))[0] == 204
                status, body, _ = await _call(http, "DELETE", f"{base}/whip/cam/no-such-session")
                assert status == 404 and body["error"]
                status, body, headers = await _call(http, "PATCH", f"{base}/whip/cam/no-such-session", data="a=x",
                                                    headers={"Content-Type": "application/trickle-ice-sdpfrag"})
                assert status == 405 and "trickle" in body["error"]
                assert "DELETE" in headers["Allow"] and "PATCH" not in headers["Allow"]
                assert (await _call(http, "PUT", f"{base}/whip/cam"))[0] == 405

                # A live stream of the same id (added by URL, or another WHIP session) is a conflict.
                status, body, _ = await _call(http, "POST", f"{base}/streams",
                                              json={"id": "synth", "url": "synthetic:?fps=5&size=160x120"})
                assert status == 201
                status, body, _ = await post("synth", offer)
                assert status == 409 and "synth" in body["error"]
                assert await good.post(offer) == 201
                candidates = [line.split()[4] for line in good.body.splitlines() if line.startswith("a=candidate:")]
                assert candidates and set(candidates) == {"127.0.0.2"}, candidates
                status, body, headers = await _call(http, "PATCH", base + str(good.location), data="a=x",
                                                    headers={"Content-Type": "application/trickle-ice-sdpfrag"})
                assert status == 405 and "PATCH" not in headers["Allow"]
                again = Publisher(http, base, "cam", TOKEN)
                assert await again.post() == 409 and "cam" in again.body["error"]
                await again.close()

                # At capacity (webrtc.max_sessions = 2): 503 with Retry-After, nothing started.
                second = Publisher(http, base, "cam2", TOKEN, codec="H264")
                assert await second.post() == 201
                third = Publisher(http, base, "cam3", TOKEN)
                assert await third.post() == 503 and third.headers["Retry-After"] == "7", third.body
                assert "max_sessions" in third.body["error"]
                await third.close()
                assert set(monitor.streams) == {"synth", "cam", "cam2"}
                assert sample(monitor.metrics, "stream_monitor_whip_sessions") == 2

                # Ending one frees its slot; its resource is gone.
                assert await second.delete() == 200
                assert await second.delete() == 404
                fourth = Publisher(http, base, "cam3", TOKEN)
                assert await fourth.post() == 201
                fourth_pc = _server_pc(_sessions(monitor), fourth)
                # Removing a WHIP stream through /streams ends its session as well.
                assert (await _call(http, "DELETE", f"{base}/streams/cam3"))[0] == 204
                await until(lambda: fourth_pc.connectionState == "closed", 10, "the removed stream's peer to close")
                assert await fourth.delete() == 404 and "cam3" not in monitor.streams
                assert await good.delete() == 200
                for pub in (good, second, fourth):
                    await pub.close()
                assert sample(monitor.metrics, "stream_monitor_whip_sessions") == 0
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_publishers_that_vanish_end_cleanly_while_other_streams_go_on(tmp_path: Path) -> None:
    """One publisher closes its peer connection, another stops sending (the stall watchdog
    ends it); neither sends DELETE. Each stream ends with its incidents' end events, its
    session and peer connection are gone, and the synthetic stream beside them keeps going."""

    async def main() -> None:
        monitor = await _monitor(tmp_path, ingest={"stall_timeout_s": 2.0},
                                 streams=[{"id": "synth", "url": "synthetic:?fps=10&size=320x240"}])
        alerts = Alerts(monitor)
        sessions = _sessions(monitor)
        synth = monitor.streams["synth"].supervisor
        try:
            async with aiohttp.ClientSession() as http:
                base = _base(monitor)
                closer = Publisher(http, base, "closer", TOKEN)
                staller = Publisher(http, base, "staller", TOKEN, codec="H264")
                assert await closer.post() == 201 and await staller.post() == 201
                server_pcs = {p.stream_id: _server_pc(sessions, p) for p in (closer, staller)}
                await until(lambda: bool(alerts.of("closer", "start")) and bool(alerts.of("staller", "start")), 60,
                            "alerts from both WHIP streams")

                # 1. The publisher closes its peer connection without DELETE.
                before = synth.status()["frames"]
                await closer.close()
                handle = monitor.streams["closer"]
                await until(handle.task.done, 10, "the closed publisher's stream to end")
                assert handle.supervisor.state == "ended"
                await until(lambda: server_pcs["closer"].connectionState == "closed", 5, "the server's peer to close")
                assert not alerts.open_incidents("closer") and alerts.of("closer", "end")
                assert sessions.get("closer", str(closer.location).rsplit("/", 1)[1]) is None
                assert (await _call(http, "DELETE", base + str(closer.location)))[0] == 404

                # 2. The publisher stops sending but keeps its connection: the stall watchdog ends it.
                staller.track.stop()
                handle = monitor.streams["staller"]
                await until(handle.task.done, 15, "the silent publisher's stream to end")
                status = handle.status()
                assert status["state"] == "ended" and "stalled" in str(status["last_error"])
                await until(lambda: server_pcs["staller"].connectionState == "closed", 5, "the server's peer to close")
                assert not alerts.open_incidents("staller") and alerts.of("staller", "end")
                await until(lambda: staller.pc.connectionState in ("closed", "failed"), 10,
                            "the publisher to see the server leave")
                await staller.close()
                assert len(sessions) == 0 and sample(monitor.metrics, "stream_monitor_whip_sessions") == 0

                # The worker kept serving the other stream throughout, and still does.
                after = synth.status()["frames"]
                assert synth.state == "up" and after >= before + 20, (before, after)
                await until(lambda: synth.status()["frames"] >= after + 5, 5, "more synthetic frames")
                assert monitor.streams["synth"].pipeline.stats.frames_analysed > 0

                # The id is free again: a new publisher replaces the ended stream.
                back = Publisher(http, base, "closer", TOKEN)
                assert await back.post() == 201
                await until(lambda: monitor.streams["closer"].pipeline.stats.frames_analysed >= 3, 30,
                            "frames from the new publisher")
                assert monitor.streams["closer"].status()["sessions"] == 1
                await until(lambda: bool(alerts.of("closer", "start")) and len(alerts.open_incidents("closer")) > 0,
                            30, "an open incident on the new publisher's stream")
                back_pc = _server_pc(sessions, back)
                # The publisher is still sending: Service.stop() must end its session too.
                await monitor.stop()
                assert back_pc.connectionState == "closed" and len(sessions) == 0
                assert not alerts.open_incidents("closer"), "stop() ended the live session's incidents"
                await back.close()
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_offer_checks_and_candidate_filter() -> None:
    offer = "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2", "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=sendonly",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        "a=candidate:2 1 udp 2130706431 192.168.1.20 5000 typ host",
        "a=candidate:3 1 udp 2130706431 abcd.local 5000 typ host",
        "a=candidate:4 1 udp 2130706431 ::1 5000 typ host",
        "a=candidate:5 1 udp 1694498815 203.0.113.9 6000 typ srflx raddr 192.168.1.20 rport 5000",
        "a=candidate:broken", "a=end-of-candidates", ""])
    video = check_offer(offer)
    assert video.kind == "video" and video.codecs == ("VP8", "RTX") and video.direction == "sendonly"
    kept_sdp, kept, dropped = filter_candidates(offer, ["127.0.0.0/8", "::1/128"])
    assert (kept, dropped) == (2, 4)
    assert "127.0.0.1 5000" in kept_sdp and "::1 5000" in kept_sdp and "a=end-of-candidates" in kept_sdp
    assert not any(bad in kept_sdp for bad in ("192.168.1.20 5000", "abcd.local", "203.0.113.9", "candidate:broken"))
    assert kept_sdp.count("\r\n") == offer.count("\r\n") - 4
    assert filter_candidates(offer, ["192.168.0.0/16"])[1:] == (1, 5)
    with pytest.raises(BadOffer, match="2 video tracks"):
        check_offer(offer.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96"))
    with pytest.raises(BadOffer, match="no video"):
        check_offer(offer.replace("m=video 9", "m=video 0"))  # a rejected section sends nothing


def test_webrtc_config_is_validated() -> None:
    cfg = load_config(environ={}).webrtc
    assert cfg.host_addresses == ["127.0.0.1"] and cfg.ice_servers == [] and cfg.max_sessions >= 1
    for bad, field in [({"host_addresses": ["not-an-ip"]}, "host_addresses"),
                       ({"host_addresses": []}, "host_addresses"),
                       ({"allowed_candidate_networks": ["10.0.0.0/33"]}, "allowed_candidate_networks"),
                       ({"max_sessions": 0}, "max_sessions"), ({"ice_servers": [{"urls": []}]}, "ice_servers"),
                       ({"stun": "stun:stun.l.google.com:19302"}, "stun")]:
        with pytest.raises(ConfigError, match=rf"webrtc\.{field}"):
            load_config(overrides={"webrtc": bad}, environ={})
