"""``stream-monitor serve`` in its own process as a fleet member (small CADDM on the CPU,
threshold 0 so every track opens an incident), with its config, log and ownership journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, name: str, tmp: Path, redis_url: str, *, capacity: int, ttl_s: float, tick_s: float,
                 sample_fps: float | str = "all") -> None:
        self.name, self.port = name, free_port()
        self.journal = tmp / f"{name}.jsonl"
        cfg = small_config(
            worker_name=name,
            detectors={"enabled": ["caddm"], "caddm": {"sample_fps": sample_fps, "window_len": 2, "window_stride": 2}},
            api={"port": self.port}, redis={"url": redis_url},
            alerts={"threshold": 0.0, "start_after": 1, "stdout": False},  # every track opens an incident
            fleet={"enabled": True, "capacity": capacity, "lease_ttl_s": ttl_s, "tick_s": tick_s,
                   "journal": str(self.journal)})
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed_at: float | None = None

    def start(self) -> "WorkerProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("STREAM_MONITOR_REDIS_URL", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream_monitor", "serve", "--config", str(self.config)],
                                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Status and raw body of a request on the worker's API (an HTTP error is an answer)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str) -> tuple[int, str]:
        """Status and body text of a GET on the worker's API."""
        status, raw = self._request("GET", path)
        return status, raw.decode()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Status and JSON answer of a request with an optional JSON body."""
        status, raw = self._request(method, path, body)
        return status, json.loads(raw) if raw else None

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited: {self.log.read_text()[-3000:]}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def records(self) -> list[dict[str, Any]]:
        """The ownership journal's records."""
        return [json.loads(line) for line in self.journal.read_text().splitlines()] if self.journal.exists() else []
