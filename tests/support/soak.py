"""The soak (RELIABILITY.md): streams over RTSP, a fleet of workers on one Redis, faults on a schedule.

Everything runs on 127.0.0.1 and is started here: a GStreamer RTSP server with one file mount
per stream (a generated face video in real time; at its end the worker reconnects, as to a
camera that restarted); a persistent ``redis-server`` (fsynced append-only file, so the alert
stream and the leases survive an outage) reached through a :class:`DelayingProxy` (slow
replies); ``workers`` fleet workers, each ``stream-monitor serve`` with the small CADDM on the
CPU and threshold 0 (every face opens an incident), run through :mod:`tests.support.soak_worker`
(a switch file makes every detector forward raise).

Faults, spread evenly over the run after the warm-up, each followed by a check that the
service recovered (every stream up and analysing again, every worker ready):

- ``rtsp_restart``: the RTSP server goes away for ``rtsp_down_s`` and comes back;
- ``redis_down``: ``redis-server`` stops for ``redis_down_s`` (leases run out, alerts wait);
- ``redis_slow``: the next replies arrive after the clients' socket timeout (the command ran);
- ``lane_fault``: every detector forward raises for ``lane_fault_s``;
- ``sigstop``: one worker is stopped past its lease TTL, its streams move, then it continues
  (a stale owner: what it still emits must be refused, its incidents ended by the new owner);
- ``sigterm``: one worker is stopped with SIGTERM (it must exit within its grace + 5 s with
  code 0) and started again.

Figures (:class:`Report`): faults injected and survived (with the recovery times), alert events
produced (each worker's JSON-lines copy), delivered (the Redis stream), duplicated (an
``(alert_id, seq)`` more than once), refused as a stale owner's, lost (produced, not delivered,
not refused) and incidents left without an ``end``; RSS and open descriptors of the worker
that is never signalled, from the end of the warm-up to the end.

``python -m tests.support.soak --minutes 60`` (``scripts/soak``) prints the report as
Markdown and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis
import yaml

from tests.support.face_videos import write_face_videos
from tests.support.rtsp import RtspServer
from tests.support.servers import RedisServer, free_port, wait_until
from tests.support.small import small_config
from tests.support.tcp_proxy import DelayingProxy

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "deepfake"
GRACE_S = 10.0
KINDS = ("rtsp_restart", "redis_down", "redis_slow", "lane_fault", "sigstop", "sigterm")


@dataclass
class Plan:
    """How long, how many streams and workers, and how many faults of each kind."""

    minutes: float = 60.0
    streams: int = 8
    workers: int = 2
    warmup_s: float = 300.0
    counts: dict[str, int] = field(default_factory=lambda: {
        "rtsp_restart": 20, "redis_down": 3, "redis_slow": 6, "lane_fault": 3, "sigstop": 2, "sigterm": 2})
    rtsp_down_s: float = 3.0
    redis_down_s: float = 30.0
    lane_fault_s: float = 10.0
    lease_ttl_s: float = 4.0
    # A fault not recovered from within this is not survived (a restarted worker must also have
    # loaded its models and be ready again).
    recover_s: float = 90.0
    video_s: float = 20.0

    @classmethod
    def short(cls) -> "Plan":
        """The suite's version: three minutes, one fault of each kind, shorter outages."""
        return cls(minutes=3.0, warmup_s=40.0, counts={k: 1 for k in KINDS}, redis_down_s=8.0, lane_fault_s=6.0,
                   recover_s=90.0, video_s=12.0)

    def schedule(self) -> list[tuple[float, str]]:
        """``(seconds after start, kind)``, evenly spaced between the warm-up and the last
        ``recover_s``; kinds interleaved so that like faults do not bunch."""
        kinds: list[str] = []
        remaining = dict(self.counts)
        while any(remaining.values()):
            for kind in KINDS:
                if remaining.get(kind, 0) > 0:
                    kinds.append(kind)
                    remaining[kind] -= 1
        end = self.minutes * 60.0 - self.recover_s
        step = (end - self.warmup_s) / max(1, len(kinds))
        return [(self.warmup_s + i * step, kind) for i, kind in enumerate(kinds)]


@dataclass
class FaultResult:
    kind: str
    at_s: float
    survived: bool
    recovery_s: float | None
    detail: str = ""


@dataclass
class Report:
    plan: dict[str, Any]
    faults: list[FaultResult]
    produced: int
    delivered: int
    duplicated: int
    refused_stale: int
    lost: int
    open_incidents: int
    dropped: dict[str, float]
    rss_start_kb: int
    rss_end_kb: int
    fds_start: int
    fds_end: int
    wall_s: float
    # (seconds since start, RSS kB, open fds, streams owned) of the unsignalled worker, every
    # 5 s: what the growth figure comes from, to set against the faults' times.
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)

    @property
    def survived(self) -> int:
        return sum(f.survived for f in self.faults)

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kb - self.rss_start_kb) / max(1, self.rss_start_kb)

    def markdown(self) -> str:
        by_kind: dict[str, list[FaultResult]] = defaultdict(list)
        for f in self.faults:
            by_kind[f.kind].append(f)
        lines = [f"Soak: {self.plan['streams']} streams, {self.plan['workers']} workers, "
                 f"{self.plan['minutes']:g} min ({self.wall_s / 60:.1f} min wall)", "",
                 "| fault | injected | survived | recovery median (s) | recovery max (s) |", "|---|---|---|---|---|"]
        for kind in KINDS:
            fs = by_kind.get(kind, [])
            times = [f.recovery_s for f in fs if f.recovery_s is not None]
            med = f"{statistics.median(times):.1f}" if times else "-"
            top = f"{max(times):.1f}" if times else "-"
            lines.append(f"| {kind} | {len(fs)} | {sum(f.survived for f in fs)} | {med} | {top} |")
        lines += ["", "| alerts | count |", "|---|---|",
                  f"| produced | {self.produced} |", f"| delivered | {self.delivered} |",
                  f"| duplicated | {self.duplicated} |", f"| refused (stale owner) | {self.refused_stale} |",
                  f"| lost | {self.lost} |", f"| incidents left open | {self.open_incidents} |", "",
                  "| resource (unsignalled worker) | end of warm-up | end | growth |", "|---|---|---|---|",
                  f"| RSS (MiB) | {self.rss_start_kb / 1024:.1f} | {self.rss_end_kb / 1024:.1f} | "
                  f"{self.rss_growth * 100:+.1f} % |",
                  f"| open fds | {self.fds_start} | {self.fds_end} | {self.fds_end - self.fds_start:+d} |"]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(survived=self.survived, rss_growth=self.rss_growth)
        return out


class Worker:
    """One ``serve`` process of the fleet, with its config, log, journal and alert copy."""

    def __init__(self, name: str, workdir: Path, redis_url: str, streams: dict[str, str], plan: Plan,
                 fault_switch: Path) -> None:
        self.name, self.port, self.workdir = name, free_port(), workdir
        self.alerts = workdir / f"{name}.alerts.jsonl"
        self.journal = workdir / f"{name}.journal.jsonl"
        self.log = workdir / f"{name}.log"
        self.fault_switch = fault_switch
        tick = plan.lease_ttl_s / 4
        cfg = small_config(
            worker_name=name,
            detectors={"enabled": ["caddm"], "caddm": {"sample_fps": 2.0, "window_len": 2, "window_stride": 2},
                       "unhealthy_after_s": 5.0},
            faces={"min_size": 24},
            api={"port": self.port, "source_hosts": ["127.0.0.1"], "max_streams": 2 * plan.streams},
            redis={"url": redis_url, "prefix": PREFIX, "stream_maxlen": 10_000_000},
            alerts={"threshold": 0.0, "start_after": 1, "stdout": False, "jsonl": str(self.alerts),
                    "spool_dir": str(workdir / "spool")},
            fleet={"enabled": True, "capacity": plan.streams, "lease_ttl_s": plan.lease_ttl_s, "tick_s": tick,
                   "journal": str(self.journal)},
            streams=[{"id": sid, "url": url} for sid, url in streams.items()])
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_metrics: dict[str, float] = {}
        self.dropped: Counter[str] = Counter()  # per reason, summed over this worker's lives

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
               "STREAM_MONITOR_SOAK_FAULT": str(self.fault_switch)}
        env.pop("STREAM_MONITOR_REDIS_URL", None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.soak_worker", "serve", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.last_metrics = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def ready(self) -> bool:
        return self.alive() and self.get("/readyz")[0] == 200

    def started(self) -> bool:
        """Ready; raises when the process has exited (a start that failed)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}: "
                               f"{self.log.read_text(errors='replace')[-2000:]}")
        return self.ready()

    def streams(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/streams")
        if status != 200:
            return {}
        return {s["id"]: s for s in json.loads(body)["streams"]}

    def scrape(self) -> None:
        """Keep the newest ``alerts_dropped_total`` per reason of this life (its counters
        restart with the process; :meth:`bank` adds a life's totals before it ends)."""
        status, body = self.get("/metrics")
        if status != 200:
            return
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r'stream_monitor_alerts_dropped_total\{reason="([^"]+)"\} ([0-9.e+-]+)$', line)
            if m:
                self.last_metrics[m.group(1)] = float(m.group(2))

    def bank(self) -> None:
        self.dropped.update({k: int(v) for k, v in self.last_metrics.items()})
        self.last_metrics = {}

    def usage(self) -> tuple[int, int] | None:
        """(RSS in kB, open file descriptors) of the process, None when it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (OSError, AssertionError):
            return None
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return (int(m.group(1)), fds) if m else None

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; the exit code (None if it had to be killed) and the seconds it took."""
        assert self.proc is not None
        self.scrape()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = None
        self.bank()
        return code, time.monotonic() - t0


class Soak:
    def __init__(self, plan: Plan, workdir: Path, say: Callable[[str], None] = lambda _: None) -> None:
        self.plan, self.workdir, self.say = plan, workdir, say
        self.results: list[FaultResult] = []
        # (t, rss kB, fds, streams owned) of workers[0]
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop_sampling = threading.Event()

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        p, w = self.plan, self.workdir
        (w / "redis").mkdir(parents=True, exist_ok=True)
        video = write_face_videos(w / "media", 1, seconds=p.video_s, fps=10, size=(192, 144))[0]
        mounts = {f"/cam{i}": video for i in range(p.streams)}
        self.rtsp = RtspServer(w, files=mounts)
        self.rtsp.start()
        self.redis = RedisServer(w / "redis", persistent=True)
        self.redis.start()
        self.proxy = DelayingProxy(self.redis.port)
        self.fault_switch = w / "lane-fault"
        streams = {mount.strip("/"): self.rtsp.url(mount) for mount in mounts}
        self.stream_ids = sorted(streams)
        url = f"redis://127.0.0.1:{self.proxy.port}/0"
        self.workers = [Worker(f"w{i}", w, url, streams, p, self.fault_switch) for i in range(p.workers)]
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            wait_until(worker.started, 180, f"worker {worker.name} ready")

    def _sample(self) -> None:
        while not self._stop_sampling.wait(5.0):
            use = self.workers[0].usage()
            if use is not None:  # the worker runs: ask it what it owns too
                owned = sum(1 for s in self.workers[0].streams().values() if s.get("owner") == self.workers[0].name)
                self.samples.append((time.monotonic() - self.t0, *use, owned))
            for worker in self.workers:
                if worker.alive():
                    worker.scrape()

    # -- health ---------------------------------------------------------------------------
    def _view(self) -> dict[str, dict[str, Any]]:
        for worker in self.workers:
            if worker.alive():
                view = worker.streams()
                if view:
                    return view
        return {}

    def _progress(self) -> dict[str, tuple[Any, int]]:
        return {sid: (s.get("owner"), int(s.get("frames_analysed") or 0)) for sid, s in self._view().items()}

    def _recovered(self, since: dict[str, tuple[Any, int]]) -> bool:
        """Every worker that should run is ready, and every stream is owned and has analysed
        frames since ``since`` (the end of the fault): under its owner then, or under a new
        one. A stream between two plays of its file (reconnecting) still counts when it
        analysed frames meanwhile: the file mounts end and restart all the time."""
        if not all(w.ready() for w in self.workers if w.proc is not None):
            return False
        view = self._view()
        for sid in self.stream_ids:
            s = view.get(sid)
            if s is None or s.get("owner") is None:
                return False
            owner, frames = since.get(sid, (None, 0))
            analysed = int(s.get("frames_analysed") or 0)
            if (s.get("owner") == owner and analysed <= frames) or analysed == 0:
                return False
        return True

    def _await_recovery(self, kind: str, at: float, fault_end: float, detail: str = "") -> None:
        deadline = fault_end + self.plan.recover_s
        since = self._progress()
        while time.monotonic() < deadline:
            if self._recovered(since):
                took = time.monotonic() - fault_end
                self.results.append(FaultResult(kind, at, True, round(took, 2), detail))
                self.say(f"  {kind} at {at:.0f}s: recovered in {took:.1f}s {detail}")
                return
            time.sleep(0.5)
        self.results.append(FaultResult(kind, at, False, None, detail or "did not recover"))
        self.say(f"  {kind} at {at:.0f}s: NOT recovered within {self.plan.recover_s:.0f}s {detail}")

    # -- faults ---------------------------------------------------------------------------
    def _inject(self, kind: str, at: float) -> None:
        p = self.plan
        detail = ""
        if kind == "rtsp_restart":
            self.rtsp.restart(down_s=p.rtsp_down_s)
        elif kind == "redis_down":
            self.redis.stop()
            time.sleep(p.redis_down_s)
            self.redis.start()
        elif kind == "redis_slow":
            # Replies held past the clients' socket timeouts: the commands ran, the answers came late.
            self.proxy.hold_next(replies=3, seconds=6.0)
            time.sleep(8.0)
        elif kind == "lane_fault":
            self.fault_switch.touch()
            time.sleep(p.lane_fault_s)
            self.fault_switch.unlink()
        elif kind == "sigstop":
            victim = self.workers[-1]
            victim.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            time.sleep(p.lease_ttl_s * 2 + 2.0)
            victim.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        elif kind == "sigterm":
            victim = self.workers[-1]
            code, took = victim.terminate(GRACE_S + 5.0)
            detail = f"(exit {code} after {took:.1f}s)"
            if code != 0:
                self.results.append(FaultResult(kind, at, False, None, f"exit code {code} after {took:.1f}s"))
                self.say(f"  sigterm at {at:.0f}s: FAILED {detail}")
                victim.start()
                return
            victim.start()
        self._await_recovery(kind, at, time.monotonic(), detail)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> Report:
        self._setup()
        self.t0 = time.monotonic()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        self.say(f"{self.plan.streams} streams on {self.plan.workers} workers, {self.plan.minutes:g} min; "
                 f"warm-up until the first fault at {self.plan.warmup_s:.0f}s")
        try:
            for at, kind in self.plan.schedule():
                wait = at - (time.monotonic() - self.t0)
                if wait > 0:
                    time.sleep(wait)
                self.say(f"{time.monotonic() - self.t0:6.0f}s fault {kind}")
                self._inject(kind, time.monotonic() - self.t0)
            rest = self.plan.minutes * 60.0 - (time.monotonic() - self.t0)
            if rest > 0:
                time.sleep(rest)
        finally:
            self._stop_sampling.set()
            sampler.join(10)
            for worker in self.workers:
                if worker.alive():
                    worker.terminate(GRACE_S + 5.0)
            wall = time.monotonic() - self.t0
            report = self._report(wall)
            self.proxy.close()
            self.redis.stop()
            self.rtsp.stop()
        return report

    def _report(self, wall: float) -> Report:
        produced: Counter[tuple[str, int]] = Counter()
        for worker in self.workers:
            if worker.alerts.exists():
                for line in worker.alerts.read_text().splitlines():
                    ev = json.loads(line)
                    produced[(ev["alert_id"], ev["seq"])] += 1
        client = redis.Redis(host="127.0.0.1", port=self.redis.port)
        try:
            rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(f"{PREFIX}:alerts")  # type: ignore[assignment]
            entries = [json.loads(fields[b"alert"]) for _, fields in rows]
        finally:
            client.close()
        delivered = Counter((ev["alert_id"], ev["seq"]) for ev in entries)
        last: dict[str, dict[str, Any]] = {}
        for ev in entries:
            last[ev["alert_id"]] = ev
        dropped: Counter[str] = Counter()
        for worker in self.workers:
            dropped.update(worker.dropped)
        stale = sum(v for k, v in dropped.items() if "stale" in k or "owner" in k)
        missing = len(set(produced) - set(delivered))
        # The start is the steady state at the end of the warm-up: the samples of the 30 s
        # before the first fault (it fires at warmup_s), so that no outage is in it. Sockets,
        # buffers and decoder state come with each stream a worker owns, and ownership moves
        # with the faults: compare the start and the end at the same number of streams (the
        # end's) when the run had it before the end; else simply the end of the warm-up.
        tail = self.samples[-3:]
        owned = tail[-1][3] if tail else None
        before = [s for s in self.samples if self.plan.warmup_s - 30.0 <= s[0] < self.plan.warmup_s]
        after = [s for s in self.samples[:-3] if s[0] >= self.plan.warmup_s]
        head = ([s for s in before if s[3] == owned][-3:] or [s for s in after if s[3] == owned][:3]
                or before[-3:] or after[:3] or tail)
        med = lambda rows, i: int(statistics.median(r[i] for r in rows)) if rows else 0  # noqa: E731
        return Report(
            plan=asdict(self.plan), faults=self.results, produced=len(produced), delivered=len(delivered),
            duplicated=sum(n - 1 for n in delivered.values() if n > 1), refused_stale=stale,
            lost=max(0, missing - stale), open_incidents=sum(1 for ev in last.values() if ev["event"] != "end"),
            dropped=dict(dropped), rss_start_kb=med(head, 1), rss_end_kb=med(tail, 1), fds_start=med(head, 2),
            fds_end=med(tail, 2), wall_s=round(wall, 1),
            samples=[(round(t, 1), rss, fds, n) for t, rss, fds, n in self.samples])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the run (default: 60)")
    ap.add_argument("--streams", type=int, default=8, help="RTSP streams (default: 8)")
    ap.add_argument("--workers", type=int, default=2, help="fleet workers (default: 2)")
    ap.add_argument("--short", action="store_true", help="the suite's 3-minute plan")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs and media here (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.short:
        plan = Plan.short()
    else:
        plan = Plan(minutes=args.minutes, streams=args.streams, workers=args.workers,
                    warmup_s=min(300.0, args.minutes * 60 / 6))
        if args.minutes < 60:  # fewer faults in a shorter run, at least one of each
            plan.counts = {k: max(1, round(n * args.minutes / 60)) for k, n in plan.counts.items()}
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = Soak(plan, workdir, say).run()
    print(report.markdown())
    if args.out is not None:
        args.out.write_text(json.dumps(report.to_json(), indent=2))
    ok = report.lost == 0 and report.duplicated == 0 and report.survived == len(report.faults) \
        and report.open_incidents == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
