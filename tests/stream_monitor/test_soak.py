"""The suite's three-minute soak (RELIABILITY.md has the hour-long one): eight RTSP streams on
two fleet workers, one fault of each kind, nothing lost, nothing duplicated, nothing stuck."""

from __future__ import annotations

from pathlib import Path

from tests.support.soak import KINDS, Plan, Soak


def test_three_minute_soak_loses_nothing_and_survives_every_fault(tmp_path: Path) -> None:
    messages: list[str] = []
    report = Soak(Plan.short(), tmp_path, messages.append).run()
    log = "\n".join(messages) + "\n\n" + report.markdown()
    assert sorted(f.kind for f in report.faults) == sorted(KINDS), log
    assert [f for f in report.faults if not f.survived] == [], log
    assert report.produced > 0 and report.delivered > 0, log
    assert report.duplicated == 0, log
    assert report.lost == 0, log
    assert report.open_incidents == 0, log
    # Reasons other than a stale owner's refusal lose alerts: none may have been counted.
    assert {k: v for k, v in report.dropped.items() if v and "stale" not in k and "owner" not in k} == {}, log
    # Descriptors come back after every reconnection and outage (a small margin for sockets
    # that happen to be open at the sample).
    assert report.fds_end - report.fds_start <= 8, log
