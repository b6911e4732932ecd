"""The bench report: one JSON-ready dict, and a plain-text table of the same numbers.

Every number in the report is plain JSON (floats, ints, strings, booleans, ``null`` where
a value does not exist, e.g. a latency percentile without alerts). The ``units`` section
names the unit of every kind of number; the field list is in :mod:`stream_monitor.bench`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .baseline import BaselineResult
from .flops import DetectorFlops, MatmulPeak, stream_flop_rates
from .pipeline_run import PipelineMeasurement

UNITS = {
    "throughput": ("track-s/s: seconds of one face track's video covered by scored windows per wall-clock "
                   "second, frames sampled at the detector's rate (a 30 fps stream with one face that is "
                   "fully analysed gives 1.0 per detector)"),
    "ratio": ("our throughput / the baseline's, same unit, same device, same weights, same media; a lower "
              "bound where pipeline.detectors.<d>.saturated is false (the streams offered less than the "
              "monitor could do)"),
    "throughput_all": ("all detectors on the same video: ours = the smallest per-detector throughput (they "
                       "run concurrently); baseline = 1 / sum(1 / per-detector throughput) (the loops run one "
                       "after the other)"),
    "rates": "frames, windows and FLOPs per wall-clock second",
    "flops": "FLOPs = 2 x multiply-accumulates of matmuls and convolutions (torch.utils.flop_counter)",
    "mfu": "achieved model FLOP/s / measured matmul peak (bf16 on CUDA, fp32 on a CPU)",
    "busy_fraction": ("sum of inference-lane busy seconds / wall; <= 1 on CUDA (one worker thread), may "
                      "exceed 1 on a CPU (a thread per lane)"),
    "latency": "seconds, last frame of the window received -> alert published",
}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _ours_flops(summary: dict[str, Any], costs: Mapping[str, DetectorFlops], face_flops: float,
                peak: MatmulPeak) -> dict[str, Any]:
    wall = summary["wall_s"]
    per_detector = {}
    for d, row in summary["detectors"].items():
        frames = row["frames_computed"]
        if frames is None:  # the runner does not count: every sampled frame once (the steady state)
            frames = row["windows_scored"] * row["window_stride"]
        per_detector[d] = costs[d].work(frames, row["windows_scored"]) / wall
        row["flops_per_s"] = per_detector[d]
    detectors = sum(per_detector.values())
    faces = face_flops * summary["frames"]["analysed_per_s"]
    return {"detectors_per_s": detectors, "faces_per_s": faces, "total_per_s": detectors + faces,
            "mfu": detectors / peak.flops_per_s, "mfu_incl_faces": (detectors + faces) / peak.flops_per_s}


def build_report(meta: dict[str, Any], scenario: dict[str, Any], peak: MatmulPeak,
                 costs: Mapping[str, DetectorFlops], face_flops: float, measurement: PipelineMeasurement,
                 baseline: Mapping[str, BaselineResult] | None, baseline_media_s: float | None) -> dict[str, Any]:
    """Assemble the report (see :mod:`stream_monitor.bench` for the fields)."""
    ours = measurement.summary()
    ours["flops"] = _ours_flops(ours, costs, face_flops, peak)
    lanes = measurement.lanes
    rates = {d: measurement.rate_of(d) for d in lanes}
    required = stream_flop_rates(costs, rates, {d: lanes[d].stride for d in lanes}, int(scenario["faces"]),
                                 face_flops, measurement.detect_rate)
    flops = {
        "peak": {"flops_per_s": peak.flops_per_s, "dtype": peak.dtype, "n": peak.n, "device": peak.device},
        "per_unit": {d: {"model": c.model, "per_frame": c.per_frame, "per_window": c.per_window}
                     for d, c in costs.items()},
        "faces_per_frame": face_flops,
        "required_per_stream": required,
    }
    base_section: dict[str, Any] | None = None
    ratio: dict[str, Any] | None = None
    if baseline is not None:
        rows = {d: r.summary(costs.get(d), face_flops, peak.flops_per_s) for d, r in baseline.items()}
        tputs = [r.throughput for r in baseline.values()]
        base_all = 1.0 / sum(1.0 / t for t in tputs) if tputs and all(t > 0 for t in tputs) else 0.0
        base_section = {"media_s": baseline_media_s, "detectors": rows, "throughput_all": base_all}
        ratio = {d: _finite(ours["detectors"][d]["throughput"] / r.throughput) if r.throughput > 0 else None
                 for d, r in baseline.items() if d in ours["detectors"]}
        ratio["all"] = _finite(ours["throughput_all"] / base_all) if base_all > 0 else None
    return {"meta": meta, "scenario": scenario, "units": UNITS, "flops": flops, "pipeline": ours,
            "baseline": base_section, "ratio": ratio}


def _num(value: Any, fmt: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt)


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.2f} "


def render_table(report: dict[str, Any]) -> str:
    """The report as a few aligned plain-text tables."""
    m, sc, p = report["meta"], report["scenario"], report["pipeline"]
    base, ratio = report["baseline"], report["ratio"]
    lines = [
        f"stream-monitor bench — {sc['label']}, {sc['duration_s']:g} s measured after {sc['warmup_s']:g} s warm-up",
        f"device {p['device']}, torch {m['torch']}, {m['threads']} threads, precision {m['precision']}, "
        f"preset {m['preset']}, weights: {m['weights']}",
        "",
        f"streams sustained in real time: {p['streams_sustained']}/{len(p['streams'])}   "
        f"frames/s decoded {p['frames']['decoded_per_s']:.1f}, analysed {p['frames']['analysed_per_s']:.1f}   "
        f"dropped: " + (", ".join(f"{k} {v:g}" for k, v in p['frames']['dropped'].items()) or "none"),
        "face detection per s: " + (", ".join(f"{k} {v:.1f}" for k, v in p["faces"]["modes_per_s"].items())
                                     or "none"),
        f"busy fraction {p['busy_fraction']:.2f}   GPU utilisation {_num(p['gpu_utilization'])}   "
        f"alert latency p50 {_num(p['alert_latency_s']['p50'])} s, p99 {_num(p['alert_latency_s']['p99'])} s "
        f"({p['alert_latency_s']['count']} alerts)",
        f"model FLOP/s {_si(p['flops']['detectors_per_s'])}FLOP/s (+ faces {_si(p['flops']['faces_per_s'])}FLOP/s), "
        f"peak {_si(report['flops']['peak']['flops_per_s'])}FLOP/s {report['flops']['peak']['dtype']}, "
        f"MFU {p['flops']['mfu']:.4f} (incl. faces {p['flops']['mfu_incl_faces']:.4f})",
        "",
        "throughput unit: track-s/s = seconds of one face track's video scored per wall second "
        "(sat: no capacity left; else ours and the ratio are lower bounds)",
        f"{'detector':<10} {'windows/s':>9} {'dropped':>7} {'batch':>5} {'busy s':>7} {'ours':>8} {'sat':>3} "
        f"{'baseline':>8} {'ratio':>7}",
    ]
    for d, row in p["detectors"].items():
        b = base["detectors"].get(d) if base else None
        lines.append(f"{d:<10} {row['windows_per_s']:>9.3f} {row['windows_dropped']:>7g} "
                     f"{_num(row['mean_batch'], '.1f'):>5} {row['busy_s']:>7.1f} {row['throughput']:>8.3f} "
                     f"{_num(row['saturated']):>3} "
                     f"{_num(b['throughput'] if b else None, '.3f'):>8} "
                     f"{_num(ratio.get(d) if ratio else None, '.2f'):>7}")
    lines.append(f"{'all':<10} {'':>9} {'':>7} {'':>5} {'':>7} {p['throughput_all']:>8.3f} {'':>3} "
                 f"{_num(base['throughput_all'] if base else None, '.3f'):>8} "
                 f"{_num(ratio.get('all') if ratio else None, '.2f'):>7}")
    if any(not row["saturated"] for row in p["detectors"].values()):
        lines += ["", "not saturated: the paced streams offered less than the monitor can do, so ours and the "
                      "ratio are lower bounds; add --streams, or --pace unpaced to measure capacity"]
    elif sc.get("pace") == "unpaced" and len(p["detectors"]) > 1:
        lines += ["", "unpaced with several detectors: frames flow at the pace of the slowest lane, so the "
                      "per-detector rows are bounded by it; 'all' is the comparison (--detectors X for one)"]
    if base:
        lines += ["", f"baseline (the authors' loops) over {base['media_s']:g} s of the same media:"]
        for d, b in base["detectors"].items():
            phases = ", ".join(f"{k} {v:.2f}" for k, v in sorted(b["phases_s"].items()))
            lines.append(f"  {d:<10} {b['wall_s']:.2f} s wall ({phases}); {b['windows']} windows, "
                         f"{b['track_seconds']:.2f} track-s")
    return "\n".join(lines)
