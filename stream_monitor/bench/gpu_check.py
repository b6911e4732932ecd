"""The prepared GPU check: every CUDA path exercised and every GPU target measured in one run.

    python -m stream_monitor.bench.gpu_check [--dry] [--out DIR] [--budget S] [--only STEP ...]

(``scripts/gpu-check.sh`` installs the travelling wheels first and runs this.) The steps of
:mod:`.gpu_steps` run in :data:`~.gpu_plan.STEPS` order, **each in its own process** with a
time limit from the budget (:mod:`.gpu_plan`): a step that fails, crashes (a CUDA error, a
segfault in a driver) or overruns is recorded and the next one still runs, with the GPU's
memory released in between. A child that passes its limit is killed with its process group;
what it reported so far stays (``partial``). ``--dry`` runs the same steps on the CPU with the
small configuration and tiny durations (the suite does, so the check cannot rot).

Files written to ``--out`` (default ``$OUT``, else ``./gpu-check-out``), at most five, which
is what the GPU machine sends back:

* ``gpu_check.json`` — rewritten after every step: ``version``, ``mode`` (``gpu``/``dry``),
  ``started_at`` (Unix s), ``budget_s``, ``elapsed_s``, ``settings`` (every knob), and
  ``steps``: {name: {``status`` (``ok``, ``error``, ``timeout``, ``crashed``, ``skipped``),
  ``seconds``, ``allowed_s``, ``error`` (one line, or null), ``result`` (the step's dict, or
  what a killed step reported before, or null)}} in run order; every step is present.
* ``summary.md`` — the Markdown summary, also printed on stdout (:mod:`.gpu_summary`).
* ``steps.log`` — the steps' own output (logs, tracebacks), the newest 4 MiB.
* ``tests.txt`` — pytest's output of the CUDA tests; ``bench_capacity.json`` — the capacity
  step's full ``stream-monitor bench`` report.

Exit status: 0 when every step ran (whatever it measured), 1 when any step did not finish
(error, timeout, crash, or skipped for time), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .gpu_plan import DRY, GPU, STEPS, CheckSettings
from .gpu_steps import STEP_FUNCTIONS, StepContext, one_line
from .gpu_summary import render_summary

VERSION = 1
_KILL_GRACE_S = 8.0  # a child past its limit gets this long to finish writing before it is killed
_LOG_KEEP = 4 * 2**20  # steps.log keeps the newest bytes


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def allowed_seconds(name: str, remaining: float, later: list[str], scale: float = 1.0) -> float:
    """The most ``name`` may run: its cap, less what the later steps' floors need (floors and
    caps times ``scale``)."""
    cap = STEPS[name][1] * scale
    return min(cap, remaining - scale * sum(STEPS[n][0] for n in later))


def _append_log(log_path: Path, name: str, child_log: Path) -> None:
    text = child_log.read_bytes() if child_log.exists() else b""
    with open(log_path, "ab") as f:
        f.write(f"\n===== step {name} =====\n".encode() + text)
    if log_path.stat().st_size > 2 * _LOG_KEEP:
        log_path.write_bytes(log_path.read_bytes()[-_LOG_KEEP:])


def run_child(name: str, allowed: float, workdir: Path, out: Path, grace: float = _KILL_GRACE_S) -> dict[str, Any]:
    """Run step ``name`` in a child process (``workdir`` holds ``settings.json`` and the
    ``report.json`` so far) and return its entry; the child is told it has ``allowed``
    seconds and is killed, with its process group, ``grace`` seconds after that."""
    result_path = workdir / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    child_log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "stream_monitor.bench.gpu_check", "--step", name, "--workdir", str(workdir),
           "--out", str(out), "--seconds", f"{allowed:.1f}"]
    t0 = time.monotonic()
    status = None
    with open(child_log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=allowed + grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's group: pytest, DataLoader workers
            rc = proc.wait()
            status = "timeout"
    seconds = time.monotonic() - t0
    _append_log(out / "steps.log", name, child_log)
    reported: dict[str, Any] = {}
    if result_path.exists():
        try:
            reported = json.loads(result_path.read_text())
        except json.JSONDecodeError as exc:
            reported = {"status": "crashed", "error": f"unreadable result: {exc}"}
    if status is None:
        status = reported.get("status") or ("crashed" if rc != 0 else "error")
        if status == "partial":  # the child died between progress reports
            status = "crashed"
    error = reported.get("error")
    if status == "timeout":
        error = f"killed after {seconds:.0f} s (limit {allowed:.0f} s); the result is what it reported before"
    elif status == "crashed" and not error:
        error = f"the step's process ended with exit status {rc} before reporting (see steps.log)"
    return {"status": status, "seconds": seconds, "allowed_s": allowed, "error": error,
            "result": reported.get("result")}


def run_check(settings: CheckSettings, out: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run every step (or ``only`` those) within ``settings.budget_s``; returns the report and
    leaves it, with the other files, in ``out``."""
    out = out.resolve()  # the children run elsewhere in the tree (pytest: the repository root)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    _write_json(workdir / "settings.json", settings.to_json())
    (out / "steps.log").write_bytes(b"")
    started, t0 = time.time(), time.monotonic()
    report: dict[str, Any] = {"version": VERSION, "mode": settings.mode, "started_at": started,
                              "budget_s": settings.budget_s, "elapsed_s": 0.0, "settings": settings.to_json(),
                              "steps": {}}
    names = [n for n in STEPS if not only or n in only]
    for i, name in enumerate(names):
        remaining = settings.budget_s - (time.monotonic() - t0)
        allowed = allowed_seconds(name, remaining, names[i + 1:], settings.time_scale)
        floor = STEPS[name][0] * settings.time_scale
        if allowed < floor:
            entry: dict[str, Any] = {"status": "skipped", "seconds": 0.0, "allowed_s": max(0.0, allowed),
                                     "error": f"not enough time: {max(0.0, allowed):.0f} s left for it, "
                                              f"it needs {floor:.0f} s", "result": None}
        else:
            _write_json(workdir / "report.json", report)
            print(f"gpu-check: {name} (at most {allowed:.0f} s)", file=sys.stderr, flush=True)
            entry = run_child(name, allowed, workdir, out)
        report["steps"][name] = entry
        report["elapsed_s"] = time.monotonic() - t0
        _write_json(out / "gpu_check.json", report)
    summary = render_summary(report)
    (out / "summary.md").write_text(summary)
    return report


# --------------------------------------------------------------------------- child side


def _child(name: str, workdir: Path, out: Path, seconds: float) -> int:
    """Run one step here and leave ``{status, result, error}`` in ``workdir/<name>.result.json``."""
    deadline = time.monotonic() + seconds
    result_path = workdir / f"{name}.result.json"
    settings = CheckSettings.from_json(json.loads((workdir / "settings.json").read_text()))
    earlier = json.loads((workdir / "report.json").read_text()).get("steps", {})
    step_dir = workdir / name
    step_dir.mkdir(exist_ok=True)

    def progress(partial: dict[str, Any]) -> None:
        _write_json(result_path, {"status": "partial", "result": partial, "error": None})

    ctx = StepContext(settings, step_dir, out, earlier, deadline, progress)
    try:
        result = STEP_FUNCTIONS[name](ctx)
    except Exception as exc:
        traceback.print_exc()
        previous = json.loads(result_path.read_text()).get("result") if result_path.exists() else None
        _write_json(result_path, {"status": "error", "result": previous, "error": one_line(exc)})
        return 1
    _write_json(result_path, {"status": "ok", "result": result, "error": None})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_monitor.bench.gpu_check",
                                     description="The prepared GPU check (see the module docstring).")
    parser.add_argument("--dry", action="store_true", help="every step small, on the CPU (the suite's run)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"),
                        help="where the JSON, logs and summary go (default: $OUT, else ./gpu-check-out)")
    parser.add_argument("--budget", type=float, help="seconds for all steps (default: 480; dry: 900)")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), metavar="STEP",
                        help=f"run only these steps ({', '.join(STEPS)})")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.step:
        if args.workdir is None or args.seconds is None:
            parser.error("--step needs --workdir and --seconds")
        return _child(args.step, args.workdir, args.out, args.seconds)
    settings = DRY if args.dry else GPU
    if args.budget is not None:
        if args.budget <= 0:
            parser.error("--budget must be positive")
        settings = CheckSettings.from_json({**settings.to_json(), "budget_s": args.budget})
    report = run_check(settings, args.out, args.only)
    print((args.out / "summary.md").read_text())
    return 0 if all(e["status"] == "ok" for e in report["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
