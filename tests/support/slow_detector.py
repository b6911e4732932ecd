"""A detector that stalls: its first ``fast`` batches run normally, every later one blocks
inside the forward (as a full-size window on a CPU does for tens of seconds) until released.

In-process tests use :class:`SlowForward` as a context manager; a subprocess runs the real
CLI with it installed: ``python -m tests.support.slow_detector FAST MARKER -- run ...``
(``MARKER``: a file created when the first batch blocks; the batch then never returns).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from stream_monitor.inference import runners


class SlowForward:
    """Patches CADDM's runner (:class:`~stream_monitor.inference.runners.PerFrameRunner`)."""

    def __init__(self, fast: int, marker: Path | None = None) -> None:
        self.fast = fast
        self.marker = marker
        self.calls = 0
        self.blocked = threading.Event()  # a batch is stuck in the forward
        self.release = threading.Event()  # set: the stuck batch (and every later one) goes on
        self._original = runners.PerFrameRunner.run

    def install(self) -> None:
        original, slow = self._original, self

        def run(runner: Any, clips: Sequence[Any]) -> list[float]:
            slow.calls += 1
            if slow.calls > slow.fast:
                if slow.marker is not None and not slow.blocked.is_set():
                    slow.marker.touch()
                slow.blocked.set()
                slow.release.wait()
            return original(runner, clips)

        runners.PerFrameRunner.run = run  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        self.release.set()
        runners.PerFrameRunner.run = self._original  # type: ignore[method-assign]

    def __enter__(self) -> "SlowForward":
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def main(argv: list[str]) -> None:
    fast, marker, sep, *cli = argv
    assert sep == "--", "usage: FAST MARKER -- <stream-monitor arguments>"
    SlowForward(int(fast), Path(marker)).install()  # never released: the forward outlives the stop
    from stream_monitor.cli import app

    app(cli, prog_name="stream-monitor")


if __name__ == "__main__":
    main(sys.argv[1:])
