"""A missing server fails the suite in CI instead of skipping its tests (issue 14): a skipped
reliability suite is not a passing one. Off CI (a developer's machine) the same tests skip."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.support.rtsp as rtsp
from tests.support.servers import RedisServer


def _without_redis_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # redis-server is not on this PATH


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_redis_server_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              ci: str | None, outcome: type[BaseException]) -> None:
    _without_redis_server(monkeypatch, tmp_path)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="redis-server"):
        RedisServer(tmp_path)


@pytest.mark.parametrize(("ci", "outcome"), [("1", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_gstreamer_rtsp_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                ci: str | None, outcome: type[BaseException]) -> None:
    # As on a machine whose system python has no gst-rtsp-server bindings.
    monkeypatch.setattr(rtsp, "SYSTEM_PYTHON", str(tmp_path / "no-python3"))
    rtsp.gi_problem.cache_clear()
    try:
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="no-python3 not found"):
            rtsp.RtspServer(tmp_path)
    finally:
        rtsp.gi_problem.cache_clear()
