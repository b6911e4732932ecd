"""``stream-monitor`` with one fault that the soak can switch on from outside the process.

While the file named by ``STREAM_MONITOR_SOAK_FAULT`` exists, every detector forward raises,
as a lane does whose GPU has run out of memory: the worker's own fault handling (split and
retry, error counters, ``/readyz``) must carry it through. Everything else is the real CLI
(``python -m tests.support.soak_worker serve --config …``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from stream_monitor.cli import main
from stream_monitor.inference import runners

_SWITCH = Path(os.environ.get("STREAM_MONITOR_SOAK_FAULT", "/nonexistent/stream-monitor-soak-fault"))


class InjectedFault(RuntimeError):
    """What a switched-on lane raises."""


def _faulty(run: Callable[[Any, Sequence[Any]], list[float]]) -> Callable[[Any, Sequence[Any]], list[float]]:
    def checked(self: Any, clips: Sequence[Any]) -> list[float]:
        if _SWITCH.exists():
            raise InjectedFault(f"injected fault: {_SWITCH} exists")
        return run(self, clips)
    return checked


for _cls in (runners.PerFrameRunner, runners.ClipRunner, runners.StyleFlowRunner):
    _cls.run = _faulty(_cls.run)  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
