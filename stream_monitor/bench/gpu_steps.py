"""The measurements of the GPU check, one function per step (:data:`STEP_FUNCTIONS`).

Each step takes a :class:`StepContext` and returns a JSON-ready dict; it runs in its own
process (:mod:`.gpu_check`); a step that measures in several parts reports each finished
part through ``ctx.progress`` (what a step killed at its deadline leaves behind). Steps and
what each returns:

* ``env`` — Python, torch, CUDA and cuDNN versions, the device (name, capability, memory,
  driver from ``nvidia-smi``), CPU count, the versions of the packages the check imports,
  whether a C compiler and ``Python.h`` exist (Triton builds its launcher with them, so
  ``torch.compile`` on CUDA needs them), and FFmpeg's hardware devices with the NVDEC verdict.
* ``peak`` — square-matmul FLOP/s per dtype (:func:`~.flops.matmul_peak`); ``mfu_reference``
  is the one MFU is measured against: bf16 on CUDA (tensor cores), fp32 on a CPU.
* ``tests`` — pytest on :data:`~.gpu_plan.CUDA_TESTS`: exit code, counts, the failures; the
  whole log goes to ``tests.txt`` beside the JSON.
* ``forwards`` — each detector's model at the preset's size on seeded uniform-noise crops,
  called as its runner calls it (``card.preprocess``, channels-last where the runner uses it,
  autocast per precision, StyleFlow's latents kept float32): median seconds per call, FLOPs
  per call (:func:`~.flops.detector_flops`), FLOP/s and MFU, and the largest |Δp| against fp32
  with :data:`~stream_monitor.inference.runners.AUTOCAST_TOLERANCE` as the bound. Random
  weights, so p may sit near 0 or 1; ``p_range`` shows where it sat.
* ``capacity`` — ``stream-monitor bench`` unpaced (capacity) against the authors' loops on the
  same device; the full report goes to ``bench_capacity.json``; per lane: ours, baseline,
  ratio, MFU of ours and of the baseline.
* ``ladder`` — :mod:`.ladder`: the most real-time streams sustained, and alert latency at 80 %
  of that and at 2x.
* ``decode`` — an H.264 file of the synthetic face decoded in software and on NVDEC
  (``ingest.hwaccel: cuda``) with the service's reader, by one thread and by several at
  once: frames per second, CPU seconds per frame, and the largest pixel difference from
  software.
* ``compile`` — the runners' ``torch.compile`` modes (``reduce-overhead`` adds CUDA graphs)
  against eager, per detector at the monitor's precision: first-call (compile) seconds,
  median seconds per call, and |Δp| against eager.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata as metadata
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

import models
from models.card import ModelCard

from ..config import DETECTOR_NAMES, load_config
from ..inference.runners import AUTOCAST_TOLERANCE, RUNNERS, autocast, compiled, prefers_channels_last
from ..inference.worker import resolve_device
from ..ingest.av_reader import device_problem, hwdevices_available, read_video, resolve_decoder
from ..ingest.synthetic import SyntheticSpec, synthetic_frames
from ..weights import model_name
from .flops import detector_flops, matmul_peak
from .gpu_plan import CheckSettings
from .ladder import LadderPlan, run_ladder
from .presets import preset_detectors
from .run import BenchOptions, run_bench
from .scenario import parse_resolution, write_video

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the repository root (the tests live there)
# Packages whose versions the env step records: what the check imports.
PACKAGES = ("torch", "torchvision", "numpy", "av", "pydantic", "pydantic-core", "facenet-pytorch", "redis",
            "safetensors", "opencv-python-headless", "pillow", "aiohttp", "prometheus-client", "pytest", "triton")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "float32"}


@dataclass
class StepContext:
    """What a step gets: the settings, a scratch folder, the output folder (files there come
    back from the GPU machine), earlier steps' results, and its deadline (``time.monotonic``)."""

    settings: CheckSettings
    workdir: Path
    out: Path
    earlier: dict[str, Any]
    deadline: float
    progress: Callable[[dict[str, Any]], None] = field(default=lambda result: None)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def earlier_result(self, step: str) -> dict[str, Any] | None:
        entry = self.earlier.get(step) or {}
        result = entry.get("result")
        return result if isinstance(result, dict) else None


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the JSON's ``error`` fields)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _device(ctx: StepContext) -> torch.device:
    return resolve_device(ctx.settings.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[list[float], Any]:
    """Seconds of ``repeats`` calls of ``fn`` (synchronised) and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, result


# --------------------------------------------------------------------------- env


def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return one_line(exc)
    return (proc.stdout.strip() or proc.stderr.strip()) or None


def env(ctx: StepContext) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device: dict[str, Any] = {"cuda_available": cuda, "count": torch.cuda.device_count() if cuda else 0}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device.update(name=props.name, capability=f"{props.major}.{props.minor}",
                      memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    include = Path(sysconfig.get_paths()["include"])
    return {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "device": device,
        "nvidia_smi": _nvidia_smi(), "packages": versions,
        "compiler": shutil.which("cc") or shutil.which("gcc"), "python_h": (include / "Python.h").exists(),
        "ffmpeg_hwdevices": list(hwdevices_available()), "nvdec_problem": device_problem("cuda"),
        "asked_device": ctx.settings.device,
    }


# --------------------------------------------------------------------------- peak


def peak(ctx: StepContext) -> dict[str, Any]:
    s, device = ctx.settings, _device(ctx)
    rows: dict[str, Any] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    for name in s.peak_dtypes:
        try:
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            p = matmul_peak(device, min_seconds=s.peak_seconds, dtype=getattr(torch, _DTYPES[name]), n=s.peak_n)
            rows[name] = {"flops_per_s": p.flops_per_s, "n": p.n}
        except Exception as exc:  # one dtype the device lacks must not hide the others
            rows[name] = {"error": one_line(exc)}
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        ctx.progress({"device": str(device), "dtypes": rows})
    reference = "bf16" if device.type == "cuda" else "fp32"
    ref = rows.get(reference, {}).get("flops_per_s")
    if ref is None:
        raise RuntimeError(f"no {reference} matmul peak: {rows.get(reference)}")
    return {"device": str(device), "dtypes": rows, "mfu_reference": {"dtype": reference, "flops_per_s": ref}}


def _reference_peak(ctx: StepContext) -> float:
    """The MFU denominator: the peak step's, else measured now."""
    result = ctx.earlier_result("peak")
    if result and result.get("mfu_reference", {}).get("flops_per_s"):
        return float(result["mfu_reference"]["flops_per_s"])
    return matmul_peak(_device(ctx), min_seconds=ctx.settings.peak_seconds).flops_per_s


# --------------------------------------------------------------------------- tests


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)")


def tests(ctx: StepContext) -> dict[str, Any]:
    s = ctx.settings
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *s.tests]
    log_path = ctx.out / "tests.txt"
    timeout = max(1.0, ctx.left() - 2.0)
    timed_out = False
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
            timed_out = True
    text = log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if _COUNT.search(ln)), lines[-1] if lines else "")
    counts: dict[str, int] = {}
    for n, kind in _COUNT.findall(summary):
        kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
        counts[kind] = counts.get(kind, 0) + int(n)
    result = {"command": " ".join(cmd[1:]), "exit_code": rc, "timed_out": timed_out, "counts": counts,
              "summary": summary.strip("= "), "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))],
              "skips": [ln for ln in lines if ln.startswith("SKIPPED")], "log": log_path.name}
    if rc != 0:  # the step reports its result and fails: a test that fails is the finding
        ctx.progress(result)
        raise RuntimeError(f"pytest exit {rc}{' (timed out)' if timed_out else ''}: {result['summary']}")
    return result


# --------------------------------------------------------------------------- forwards


@dataclass
class _Case:
    """One detector's model and a batch of inputs, called as its runner calls it."""

    detector: str
    model_name: str
    model: Any
    unit: str  # "frame" or "clip"
    units: int
    flops: float  # per call
    channels_last: bool
    inputs: dict[str, torch.Tensor]

    def parts(self) -> dict[str, Callable[..., Any]]:
        """The callables the runner compiles (``detectors.compile``)."""
        if self.detector == "styleflow":
            return {"encode": self.model.encode_frames, "from_latents": self.model.forward_from_latents}
        return {"forward": self.model}

    def run(self, precision: str, parts: dict[str, Callable[..., Any]] | None = None) -> torch.Tensor:
        """The batch's probabilities (float32, on the host) under ``precision``'s autocast."""
        device = next(iter(self.inputs.values())).device
        fns = parts or self.parts()
        with autocast(device, precision):  # type: ignore[arg-type]
            if self.detector != "styleflow":
                return fns["forward"](self.inputs["x"]).float().cpu()
            # As StyleFlowRunner: latents under autocast but kept float32, then the clip forward.
            latents = fns["encode"](self.inputs["frames"]).float()
        latents = latents.reshape(self.units, -1, *latents.shape[1:])
        with autocast(device, precision):  # type: ignore[arg-type]
            return fns["from_latents"](latents, self.inputs["video"]).float().cpu()


def _detectors_config(s: CheckSettings) -> Any:
    return load_config(overrides={"detectors": {"random_weights": True, "device": s.device,
                                                **preset_detectors(s.preset, list(DETECTOR_NAMES))}},
                       environ={}).detectors


def _case(detector: str, s: CheckSettings, device: torch.device) -> _Case:
    dcfg = _detectors_config(s)
    name, overrides = model_name(detector, dcfg), dcfg.detector(detector).overrides
    torch.manual_seed(0)
    # Parameters are initialised where they will live: a full-size StyleFlow (1.05 B parameters)
    # takes long to fill on a CPU; .to() then moves anything the constructor left on the host.
    with torch.device(device):
        model: Any = models.create_model(name, **overrides)
    model = model.to(device).eval()
    card = model.card
    assert isinstance(card, ModelCard)
    cost = detector_flops(detector, name, overrides)
    n, size = s.forward_batch[detector], card.template.size
    gen = torch.Generator().manual_seed(1)

    def crops(*shape: int) -> torch.Tensor:  # uint8 RGB crops, channels-last, on the device
        return torch.randint(0, 256, (*shape, size, size, 3), generator=gen, dtype=torch.uint8).to(device)

    conv_part = model.psp if detector == "styleflow" else model
    channels_last = RUNNERS[detector].channels_last_convs and prefers_channels_last(conv_part, device)
    if channels_last:
        conv_part.to(memory_format=torch.channels_last)

    def layout(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    with torch.inference_mode():
        if detector == "caddm":
            inputs = {"x": layout(card.preprocess(crops(n)))}
            return _Case(detector, name, model, "frame", n, cost.per_frame * n, channels_last, inputs)
        t = card.clip_len
        if detector == "sta":
            inputs = {"x": card.preprocess(crops(n, t))}
            return _Case(detector, name, model, "clip", n, cost.per_window * n, channels_last, inputs)
        frames = card.preprocess(crops(n * t))  # [n*t, 3, S, S] RGB 0-255
        small = model.cfg.content.input_size
        video = model.content_input(frames).reshape(n, t, 3, small, small).transpose(1, 2).contiguous()
    inputs = {"frames": layout(frames), "video": video}
    return _Case(detector, name, model, "clip", n, cost.per_frame * n * t + cost.per_window * n, channels_last,
                 inputs)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _forward_rows(ctx: StepContext, detector: str, device: torch.device, peak_flops: float,
                  row: dict[str, Any], report: Callable[[], None]) -> None:
    """Fill ``row`` with one detector's forwards by precision (its model is freed on return)."""
    s = ctx.settings
    case = _case(detector, s, device)
    row.update(model=case.model_name, unit=case.unit, batch=case.units, flops_per_call=case.flops,
               channels_last=case.channels_last, precisions={})
    reference: torch.Tensor | None = None
    for precision in s.forward_precisions:
        try:
            autocast(device, precision)  # type: ignore[arg-type]
        except ValueError as exc:  # fp16 off CUDA: the runners refuse it too
            row["precisions"][precision] = {"skipped": str(exc)}
            continue
        for _ in range(s.forward_warmup):
            case.run(precision)
        times, probs = _timed(lambda: case.run(precision), s.forward_repeats, device)
        med = statistics.median(times)
        entry: dict[str, Any] = {"median_s": med, "min_s": min(times), "flops_per_s": case.flops / med,
                                 "mfu": case.flops / med / peak_flops}
        if precision == "fp32":
            reference = probs
            row["p_range"] = [float(probs.min()), float(probs.max())]
        elif reference is not None:
            diff = float((probs - reference).abs().max())
            entry.update(max_abs_dp=diff, within_tolerance=diff <= AUTOCAST_TOLERANCE)
        row["precisions"][precision] = entry
        report()
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def forwards(ctx: StepContext) -> dict[str, Any]:
    s, device = ctx.settings, _device(ctx)
    peak_flops = _reference_peak(ctx)
    out: dict[str, Any] = {"device": str(device), "preset": s.preset, "peak_flops_per_s": peak_flops,
                           "tolerance": AUTOCAST_TOLERANCE, "repeats": s.forward_repeats,
                           "inputs": "seeded uniform-noise uint8 crops; random seeded weights", "detectors": {}}
    for detector in DETECTOR_NAMES:
        row: dict[str, Any] = {}
        out["detectors"][detector] = row
        try:
            with torch.inference_mode():
                _forward_rows(ctx, detector, device, peak_flops, row, lambda: ctx.progress(out))
        except Exception as exc:  # one detector that fails must not hide the others
            row["error"] = one_line(exc)
            log.exception("forwards: %s", detector)
        _release(device)
        ctx.progress(out)
    return out


# --------------------------------------------------------------------------- capacity


def capacity(ctx: StepContext) -> dict[str, Any]:
    s = ctx.settings
    opts = BenchOptions(streams=s.capacity_streams, resolution=s.resolution, fps=s.fps, faces=s.faces,
                        pace="unpaced", detectors=s.bench_detectors, duration_s=s.capacity_duration_s,
                        warmup_s=s.capacity_warmup_s, preset=s.preset, device=s.device, precision=s.precision,
                        baseline=True, baseline_seconds=s.capacity_baseline_s, workdir=ctx.workdir / "capacity")
    report = run_bench(opts)
    (ctx.out / "bench_capacity.json").write_text(json.dumps(report, indent=1) + "\n")
    p, base, ratio = report["pipeline"], report["baseline"], report["ratio"]
    peak_flops = report["flops"]["peak"]["flops_per_s"]
    lanes = {}
    for d, row in p["detectors"].items():
        b = base["detectors"][d]
        lanes[d] = {"ours": row["throughput"], "baseline": b["throughput"], "ratio": ratio.get(d),
                    "mfu": row["flops_per_s"] / peak_flops, "baseline_mfu": b["mfu"],
                    "windows_per_s": row["windows_per_s"], "mean_batch": row["mean_batch"], "busy_s": row["busy_s"]}
    return {"report": "bench_capacity.json", "scenario": report["scenario"]["label"],
            "precision": report["meta"]["precision"], "peak": report["flops"]["peak"], "lanes": lanes,
            "ours_all": p["throughput_all"], "baseline_all": base["throughput_all"], "ratio_all": ratio.get("all"),
            "mfu": p["flops"]["mfu"], "mfu_incl_faces": p["flops"]["mfu_incl_faces"],
            "busy_fraction": p["busy_fraction"], "gpu_utilization": p["gpu_utilization"],
            "analysed_per_s": p["frames"]["analysed_per_s"], "faces_mean_batch": p["faces"]["mean_batch"],
            "alert_latency_s": p["alert_latency_s"]}


# --------------------------------------------------------------------------- ladder


def ladder(ctx: StepContext) -> dict[str, Any]:
    s = ctx.settings
    plan = LadderPlan(start=s.ladder_start, max_streams=s.ladder_max, settle_s=s.ladder_settle_s,
                      measure_s=s.ladder_measure_s, latency_s=s.ladder_latency_s, drain_max_s=s.ladder_drain_max_s)
    return asyncio.run(run_ladder(s, plan, ctx.workdir / "ladder", ctx.deadline, ctx.progress))


# --------------------------------------------------------------------------- decode


class _DecoderLog(logging.Handler):
    """Collects which decoder the reader reports per opened stream ("on cuda" / "in software")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.decoders: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r": decoding \S+ \d+x\d+ (on (\w+)|in software)", record.getMessage())
        if match:
            self.decoders.append(match.group(2) or "software")


@contextlib.contextmanager
def _decoder_log() -> Iterator[_DecoderLog]:
    logger = logging.getLogger("stream_monitor.ingest.av_reader")
    handler, level = _DecoderLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _decode_all(path: Path, setting: str, keep: int = 0) -> tuple[int, list[Any]]:
    count, kept = 0, []
    for frame in read_video("gpu-check", str(path), shown=path.name, hwaccel=setting):  # type: ignore[arg-type]
        if count < keep:
            kept.append(frame.image)
        count += 1
    return count, kept


def decode(ctx: StepContext) -> dict[str, Any]:
    s = ctx.settings
    width, height = parse_resolution(s.resolution)
    spec = SyntheticSpec(fps=s.fps, width=width, height=height, faces=s.faces, seconds=s.decode_seconds)
    path = ctx.workdir / f"decode_{width}x{height}.mp4"
    t0 = time.perf_counter()
    write_video(path, synthetic_frames(spec), s.fps)
    out: dict[str, Any] = {"file": f"H.264 {width}x{height} {s.fps:g} fps, {s.decode_seconds:g} s (libx264)",
                           "encode_s": time.perf_counter() - t0, "parallel": s.decode_parallel, "decoders": {}}
    software: list[Any] = []
    for setting in ("none", "cuda"):
        if setting == "cuda" and resolve_decoder("cuda") != "cuda":
            out["decoders"]["cuda"] = {"available": False, "reason": device_problem("cuda")}
            continue
        with _decoder_log() as used:
            cpu0, w0 = os.times(), time.perf_counter()
            frames, kept = _decode_all(path, setting, keep=3)
            single_s, cpu1 = time.perf_counter() - w0, os.times()
            w1 = time.perf_counter()
            with ThreadPoolExecutor(s.decode_parallel) as pool:
                counts = list(pool.map(lambda _: _decode_all(path, setting)[0], range(s.decode_parallel)))
            parallel_s, cpu2 = time.perf_counter() - w1, os.times()
        if setting == "none":
            software = kept
        diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(kept, software)]
        cpu = (cpu2.user + cpu2.system) - (cpu1.user + cpu1.system)
        out["decoders"][setting] = {
            "available": True, "decoded_on": sorted(set(used.decoders)), "frames": frames,
            "fps_single": frames / single_s,
            "cpu_ms_per_frame_single": 1000 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / frames,
            "fps_parallel_total": sum(counts) / parallel_s, "cpu_ms_per_frame_parallel": 1000 * cpu / sum(counts),
            "max_abs_diff_vs_software": int(max(int(d.max()) for d in diffs)) if diffs else None,
            "mean_abs_diff_vs_software": float(np.mean([d.mean() for d in diffs])) if diffs else None,
        }
        ctx.progress(out)
    dec = out["decoders"]
    if dec.get("cuda", {}).get("available"):
        out["nvdec_speedup_parallel"] = dec["cuda"]["fps_parallel_total"] / dec["none"]["fps_parallel_total"]
    return out


# --------------------------------------------------------------------------- compile


def _compile_rows(ctx: StepContext, detector: str, device: torch.device, rows: dict[str, Any],
                  report: Callable[[], None]) -> None:
    """Fill ``rows`` with one detector's timings per compile mode (its model is freed on return)."""
    s = ctx.settings
    case = _case(detector, s, device)
    eager: torch.Tensor | None = None
    for mode in s.compile_modes:
        if ctx.left() < 5:
            rows[mode] = {"skipped": "no time left"}
            continue
        try:
            torch._dynamo.reset()  # each mode compiles from scratch, as a fresh worker would
            parts = {k: compiled(fn, mode) for k, fn in case.parts().items()}  # type: ignore[arg-type]
            t0 = time.perf_counter()
            case.run(s.precision, parts)
            _sync(device)
            first = time.perf_counter() - t0
            case.run(s.precision, parts)  # CUDA graphs record on a later call than the first
            times, probs = _timed(lambda: case.run(s.precision, parts), s.compile_repeats, device)
            entry: dict[str, Any] = {"first_call_s": first, "median_s": statistics.median(times)}
            if mode == "off":
                eager = probs
            elif eager is not None:
                entry["max_abs_dp_vs_off"] = float((probs - eager).abs().max())
                entry["speedup_vs_off"] = rows["off"]["median_s"] / entry["median_s"]
            else:
                entry["note"] = "no eager ('off') result to compare with"
            rows[mode] = entry
        except Exception as exc:  # a mode that cannot compile here must not hide the others
            rows[mode] = {"error": one_line(exc)}
            log.exception("compile: %s %s", detector, mode)
        report()


def compile_step(ctx: StepContext) -> dict[str, Any]:
    s, device = ctx.settings, _device(ctx)
    out: dict[str, Any] = {"device": str(device), "precision": s.precision, "repeats": s.compile_repeats,
                           "detectors": {}}
    for detector in s.compile_detectors:
        rows: dict[str, Any] = {}
        out["detectors"][detector] = rows
        try:
            with torch.inference_mode():  # as the worker thread runs every forward
                _compile_rows(ctx, detector, device, rows, lambda: ctx.progress(out))
        except Exception as exc:
            rows["error"] = one_line(exc)
            log.exception("compile: %s", detector)
        _release(device)
        ctx.progress(out)
    return out


STEP_FUNCTIONS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "env": env, "peak": peak, "tests": tests, "forwards": forwards, "capacity": capacity, "ladder": ladder,
    "decode": decode, "compile": compile_step,
}
