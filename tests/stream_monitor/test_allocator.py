"""glibc malloc tuning (stream_monitor.allocator; issue 14, the soak's memory growth).

Each case runs in a fresh interpreter, because ``mallopt`` changes the whole process and
arenas already handed to threads stay theirs. The probe observes glibc itself through
``malloc_info``: how many arenas six concurrent threads end up with, and whether a 1 MiB block
is mmapped after a freed 4 MiB one (glibc's dynamic threshold would have risen to 4 MiB and
put it in an arena). Without the tuning the same probe sees the defaults, so it can fail.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from stream_monitor.allocator import ARENAS, MMAP_THRESHOLD, OPT_OUT, operator_setting, tune_allocator

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = r"""
import ctypes, json, re, sys, tempfile, threading

how = sys.argv[1]
applied = None
if how == "tune":
    from stream_monitor.allocator import tune_allocator
    applied = tune_allocator()
elif how == "cli":
    from stream_monitor import cli
    sys.argv = ["stream-monitor", "--help"]
    try:
        cli.main()
    except SystemExit:
        pass

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]

def info():
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return open(tmp.name).read()

def mmapped():
    return int(re.findall(r'<total type="mmap" count="(\d+)"', info())[-1])

big = libc.malloc(4 << 20)
libc.free(big)
before = mmapped()
block = libc.malloc(1 << 20)
after = mmapped()
libc.free(block)

barrier = threading.Barrier(6)
def work():
    p = libc.malloc(1000)
    barrier.wait()
    libc.free(p)
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"applied": applied, "mmapped": after - before, "arenas": info().count("<heap nr=")}))
"""


def _probe(how: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", PROBE, how], cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_tuning_caps_arenas_and_fixes_the_mmap_threshold() -> None:
    tuned = _probe("tune")
    assert tuned["applied"] == {"arena_max": ARENAS, "mmap_threshold": MMAP_THRESHOLD}
    assert tuned["mmapped"] == 1  # 1 MiB >= the fixed 256 KiB threshold: mmapped, unmapped on free
    assert isinstance(tuned["arenas"], int) and 1 <= tuned["arenas"] <= ARENAS


def test_without_tuning_the_probe_sees_glibc_defaults() -> None:
    plain = _probe("none")
    assert plain["mmapped"] == 0  # the freed 4 MiB block raised the dynamic threshold past 1 MiB
    assert isinstance(plain["arenas"], int) and plain["arenas"] > ARENAS


def test_the_cli_tunes_before_running_a_command() -> None:
    via_cli = _probe("cli")
    assert via_cli["mmapped"] == 1
    assert isinstance(via_cli["arenas"], int) and via_cli["arenas"] <= ARENAS


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "8"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"},
                                 {OPT_OUT: "default"}])
def test_the_operators_malloc_settings_win(env: dict[str, str]) -> None:
    assert operator_setting(env) == next(iter(env))
    assert tune_allocator(env) == {}  # nothing applied in this process either
    untouched = _probe("cli", **env)
    assert untouched["mmapped"] == 0 and isinstance(untouched["arenas"], int) and untouched["arenas"] > ARENAS


def test_unrelated_environment_does_not_opt_out() -> None:
    assert operator_setting({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", OPT_OUT: "tuned", "PATH": "/bin"}) is None
