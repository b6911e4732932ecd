"""Per-stream settings (name, detectors, threshold, max_fps): checked like the global ones, in
``POST /streams`` bodies and ``streams:`` entries, shown by ``GET /streams``, and in effect.

A running service with small random-weight CADDM and StA and a global threshold of 1 (random
weights never reach it): a stream limited to CADDM with its own threshold 0 alerts with CADDM's
score alone, against its own threshold; a stream with the global settings is scored by both
detectors and never alerts; a stream with ``max_fps`` 2 is analysed at most twice a second of
stream time.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream_monitor.api.streams import parse_settings
from stream_monitor.config import ConfigError, StreamSettings, load_config
from tests.support.api import Api
from tests.stream_monitor.test_ui import SYNTH, start_monitor, sse
from tests.support.small import small_config

TOKEN = "settings-test-token"


def settings_config() -> dict[str, Any]:
    return small_config(
        detectors={"enabled": ["caddm", "sta"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2},
                   "sta": {"sample_fps": 4.0, "window_stride": 2}},
        faces={"min_size": 20}, alerts={"threshold": 1.0, "start_after": 1, "end_after": 1, "stdout": False},
        api={"port": 0, "token": TOKEN})


def test_settings_are_checked_in_config_files() -> None:
    cfg = load_config(overrides={"detectors": {"enabled": ["caddm"]}, "streams": [
        {"id": "door", "url": SYNTH, "name": "Front door", "detectors": ["caddm"], "threshold": 0.4, "max_fps": 5}]},
        environ={})
    s = cfg.streams[0]
    assert (s.name, s.detectors, s.threshold, s.max_fps) == ("Front door", ["caddm"], 0.4, 5.0)
    for bad, words in (({"detectors": ["sta"]}, "not enabled"), ({"detectors": ["nope"]}, "streams.0.detectors"),
                       ({"detectors": []}, "at least one"), ({"threshold": 1.5}, "streams.0.threshold"),
                       ({"max_fps": 0}, "streams.0.max_fps"), ({"name": "a\nb"}, "plain text"), ({"name": ""}, "name")):
        with pytest.raises(ConfigError, match=words):
            load_config(overrides={"detectors": {"enabled": ["caddm"]},
                                   "streams": [{"id": "door", "url": SYNTH, **bad}]}, environ={})
    # The API's check of a body is the same: a detector this service does not run is refused.
    assert "not enabled" in str(parse_settings({"detectors": ["sta"]}, ["caddm"]))
    assert parse_settings({"detectors": ["caddm"], "threshold": 1}, ["caddm"]) == StreamSettings(
        detectors=["caddm"], threshold=1.0)
    with pytest.raises(ConfigError, match="fleet.enabled"):
        load_config(overrides={"redis": {"url": "redis://127.0.0.1:1/0"}, "fleet": {"enabled": True},
                               "streams": [{"id": "door", "url": SYNTH, "threshold": 0.5}]}, environ={})


def test_settings_over_the_api_and_their_effect(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start_monitor(settings_config())
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0, TOKEN)
                for body, words in (({"detectors": ["nope"]}, "'detectors.0'"), ({"detectors": "caddm"}, "'detectors'"),
                                    ({"detectors": []}, "at least one"), ({"threshold": 2}, "'threshold'"),
                                    ({"threshold": "0.5"}, "'threshold'"), ({"threshold": True}, "'threshold'"),
                                    ({"max_fps": 0}, "'max_fps'"), ({"name": "x\u202ey"}, "'name'"),
                                    ({"name": 5}, "'name'"), ({"colour": "red"}, "unknown fields")):
                    status, reply = await api.call("POST", "/streams", json={"id": "bad", "url": SYNTH, **body})
                    assert status == 400 and words in reply["error"], (body, status, reply)
                assert "bad" not in monitor.streams

                own = {"name": "Lobby camera", "detectors": ["caddm"], "threshold": 0.0, "max_fps": 2}
                status, reply = await api.call("POST", "/streams", json={"id": "lobby", "url": SYNTH, **own})
                assert status == 201, reply
                assert {k: reply[k] for k in own} == {**own, "max_fps": 2.0}
                status, reply = await api.call("POST", "/streams", json={"id": "plain", "url": SYNTH})
                assert status == 201 and reply["name"] is None and reply["detectors"] == ["caddm", "sta"], reply
                assert reply["threshold"] == 1.0 and reply["max_fps"] is None, reply

                # Live frames of each stream, read from /events while both run.
                pts: dict[str, list[float]] = {"lobby": [], "plain": []}

                async def read_live() -> None:
                    async with s.get(api.base + "/events", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                        async for name, data in sse(r):
                            if name == "live" and data["stream_id"] in pts and data["pts"] is not None:
                                seen = pts[data["stream_id"]]
                                if not seen or seen[-1] != data["pts"]:
                                    seen.append(data["pts"])

                reader = asyncio.ensure_future(read_live())
                deadline = time.monotonic() + 90

                async def stream(sid: str) -> dict[str, Any]:
                    return (await api.call("GET", f"/streams/{sid}"))[1]  # type: ignore[no-any-return]

                while True:
                    alerts = (await api.call("GET", "/alerts?stream=lobby"))[1]["alerts"]
                    lobby, plain = await stream("lobby"), await stream("plain")
                    if alerts and "sta" in plain["last_scores"] and len(pts["lobby"]) >= 4 and len(pts["plain"]) >= 4:
                        break
                    assert time.monotonic() < deadline, (alerts, lobby, plain, pts)
                    await asyncio.sleep(0.5)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

                # detectors: the lobby is scored by CADDM alone, the other stream by both.
                assert set(lobby["last_scores"]) == {"caddm"}, lobby
                assert all(set(a["detectors"]) == {"caddm"} and set(a["models"]) == {"caddm"} for a in alerts), alerts
                # threshold: the lobby's own (0) applies; the global one (1) keeps the other quiet.
                assert all(a["threshold"] == 0.0 for a in alerts), alerts
                assert (await api.call("GET", "/alerts?stream=plain"))[1]["alerts"] == []
                # max_fps: the lobby's analysed frames are at least 1/2 s apart in stream time.
                gaps = [b - a for a, b in zip(pts["lobby"], pts["lobby"][1:])]
                assert min(gaps) >= 0.45, pts["lobby"]
                plain_gaps = [b - a for a, b in zip(pts["plain"], pts["plain"][1:])]
                assert min(plain_gaps) < 0.45, pts["plain"]  # without it: closer (the check can tell)
                listed = {x["id"]: x for x in (await api.call("GET", "/streams"))[1]["streams"]}
                assert listed["lobby"]["name"] == "Lobby camera" and listed["lobby"]["detectors"] == ["caddm"]
                assert listed["lobby"]["threshold"] == 0.0 and listed["lobby"]["max_fps"] == 2.0
                print(json.dumps({"lobby_gaps": gaps[:5], "plain_gaps": plain_gaps[:5]}))
        finally:
            await monitor.stop()

    asyncio.run(main())
