"""Real servers on loopback for the tests: free ports, start, wait until ready, stop.

Every server binds 127.0.0.1 on a port the OS picked, runs in its own temporary
directory, and is stopped with SIGTERM (then SIGKILL) in teardown.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1; ``stop()``/``start()`` keep the same port.

    ``launcher``: a command that ends by exec'ing ``redis-server`` with the arguments it is
    given (deploy/redis/start.sh), run with ``env``; ``username``/``password``: the ACL user
    that :attr:`url` and the readiness ping authenticate as."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False,
                 launcher: list[str] | None = None, env: dict[str, str] | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # persistent: an fsync'ed append-only file, so data survives stop()/start().
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.launcher = launcher or [exe]
        self.env = env
        self.username, self.password = username, password

    @property
    def url(self) -> str:
        auth = f"{self.username}:{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.launcher, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *self.persistence,
             "--dir", str(self.workdir), "--protected-mode", "yes"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, "redis-server")

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        auth = b""
        if self.password is not None:
            auth = f"AUTH {self.username or 'default'} {self.password}\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(auth + b"PING\r\n")
            reply = b""
            while reply.count(b"\r\n") < (2 if auth else 1):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.endswith(b"+PONG\r\n")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
