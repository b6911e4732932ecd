"""The GPU check's report as Markdown (what ``scripts/gpu-check.sh`` prints and BENCHMARKS.md takes).

One table of the steps (status, seconds), then a section per step that produced a result;
a step that failed still shows what it measured before. Numbers only, no judgement beyond
the targets named in the project's issues (≥ 60 streams per H100, ≥ 10x the authors' loops).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable


def _f(value: Any, fmt: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def _tera(value: Any) -> str:
    return "–" if value is None else f"{value / 1e12:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _env(r: dict[str, Any]) -> list[str]:
    d = r.get("device", {})
    return [f"- device: {d.get('name', 'CPU')} (capability {_f(d.get('capability'))}, {_f(d.get('memory_gib'))} GiB), "
            f"nvidia-smi: {_f(r.get('nvidia_smi'))}",
            f"- torch {r.get('torch')} (CUDA {_f(r.get('torch_cuda'))}, cuDNN {_f(r.get('cudnn'))}), Python "
            f"{r.get('python')}, {r.get('cpus')} CPUs; C compiler {_f(r.get('compiler'))}, Python.h "
            f"{_f(r.get('python_h'))}",
            f"- FFmpeg hardware devices: {', '.join(r.get('ffmpeg_hwdevices') or []) or 'none'}; NVDEC: "
            f"{r.get('nvdec_problem') or 'usable'}"]


def _peak(r: dict[str, Any]) -> list[str]:
    rows = [[k, _tera(v.get("flops_per_s")) if "error" not in v else v["error"], _f(v.get("n"))]
            for k, v in r.get("dtypes", {}).items()]
    ref = r.get("mfu_reference", {})
    return _table(["dtype", "TFLOP/s", "n"], rows) + ["", f"MFU is against the {ref.get('dtype')} peak, "
                                                          f"{_tera(ref.get('flops_per_s'))} TFLOP/s."]


def _tests(r: dict[str, Any]) -> list[str]:
    lines = [f"`{r.get('command')}`: exit {r.get('exit_code')}{' (timed out)' if r.get('timed_out') else ''} — "
             f"{r.get('summary')}"]
    lines += [f"- {ln}" for ln in r.get("failures", [])[:20]]
    lines += [f"- {ln}" for ln in r.get("skips", [])[:20]]
    return lines


def _forwards(r: dict[str, Any]) -> list[str]:
    rows = []
    for d, row in r.get("detectors", {}).items():
        if "error" in row and not row.get("precisions"):
            rows.append([d, "–", "–", "–", row["error"], "", "", "", ""])
            continue
        for p, e in row.get("precisions", {}).items():
            if "skipped" in e:
                rows.append([d, row.get("model", ""), f"{row.get('batch')} {row.get('unit')}s", p, e["skipped"],
                             "", "", "", ""])
                continue
            rows.append([d, row.get("model", ""), f"{row.get('batch')} {row.get('unit')}s", p,
                         _f(1000 * e["median_s"], ".1f"), _f(row.get("flops_per_call") / 1e9, ".1f"),
                         _tera(e.get("flops_per_s")), _f(e.get("mfu"), ".3f"),
                         "ref." if p == "fp32" else f"{_f(e.get('max_abs_dp'), '.2g')} "
                         f"({'ok' if e.get('within_tolerance') else 'over'})"])
    return [f"preset {r.get('preset')}, {r.get('inputs')}; median of {r.get('repeats')} calls:", ""] + _table(
        ["detector", "model", "batch", "precision", "ms / call", "GFLOP / call", "TFLOP/s", "MFU",
         f"max abs dp vs fp32 (<= {r.get('tolerance')})"], rows)


def _capacity(r: dict[str, Any]) -> list[str]:
    rows = [[d, _f(v["ours"]), _f(v["baseline"]), _f(v["ratio"], ".2f"), _f(v["mfu"], ".3f"),
             _f(v["baseline_mfu"], ".3f"), _f(v["mean_batch"], ".1f")] for d, v in r.get("lanes", {}).items()]
    rows.append(["**all**", _f(r.get("ours_all")), _f(r.get("baseline_all")), f"**{_f(r.get('ratio_all'), '.2f')}**",
                 _f(r.get("mfu"), ".3f"), "", ""])
    notes = (f"busy fraction {_f(r.get('busy_fraction'), '.2f')}, GPU utilisation "
             f"{_f(r.get('gpu_utilization'), '.2f')}, analysed {_f(r.get('analysed_per_s'), '.1f')} frames/s, face "
             f"batch {_f(r.get('faces_mean_batch'), '.1f')}, MFU incl. faces {_f(r.get('mfu_incl_faces'), '.3f')}; "
             f"full report: `{r.get('report')}`")
    return [f"{r.get('scenario')}, ours in {r.get('precision')}, the authors' loops in fp32 (target: ratio >= 10):",
            ""] + _table(["detector", "ours (track-s/s)", "baseline", "ratio", "MFU ours", "MFU baseline",
                          "mean batch"], rows) + ["", notes]


def _probe_row(p: dict[str, Any], label: str = "") -> list[str]:
    lat = p.get("alert_latency_s", {})
    win = ", ".join(f"{d} {v['windows_per_s']:.1f}/{v['offered_per_s']:.1f}" for d, v in p.get("detectors", {}).items())
    return [label or str(p["streams"]), f"{p['sustained']}/{p['streams']}", _f(p["keeps_up"]),
            _f(p["analysed_per_s"], ".0f"), win, _f(p["busy_fraction"], ".2f"), _f(p["cpu_util"], ".2f"),
            f"{_f(lat.get('p50'), '.2f')} / {_f(lat.get('p99'), '.2f')}", "; ".join(p.get("why", [])) or "–"]


def _ladder(r: dict[str, Any]) -> list[str]:
    header = ["streams", "sustained", "keeps up", "analysed fps", "windows/s scored/offered", "busy", "CPU",
              "latency p50 / p99 s", "why not"]
    lines = [f"{r.get('scenario')}; model start {_f(r.get('start_s'), '.1f')} s", ""]
    lines += _table(header, [_probe_row(p) for p in r.get("probes", [])])
    lines += ["", f"**Streams sustained in real time: {_f(r.get('capacity_streams'))}** (bracket "
                  f"{r.get('bracket')}, stopped: {r.get('stopped')}; target >= {r.get('target_streams')})", ""]
    latency = r.get("latency", {})
    rows = []
    for label, p in latency.items():
        if isinstance(p, dict) and "streams" in p and "keeps_up" in p:
            rows.append(_probe_row(p, f"{label}: {p['streams']}"))
        elif isinstance(p, dict):
            rows.append([label, "–", "–", "–", "–", "–", "–", "–", p.get("skipped", "")])
        else:
            rows.append([label, "–", "–", "–", "–", "–", "–", "–", str(p)])
    if rows:
        lines += [f"Alert latency at 80 % and at 2x of {r.get('latency_base_streams')} stream(s):", ""] + _table(
            header, rows)
    return lines


def _decode(r: dict[str, Any]) -> list[str]:
    rows = []
    for name, d in r.get("decoders", {}).items():
        if not d.get("available"):
            rows.append([name, "unavailable", "", "", "", "", d.get("reason") or ""])
            continue
        rows.append([name, ", ".join(d.get("decoded_on", [])), _f(d["fps_single"], ".0f"),
                     _f(d["fps_parallel_total"], ".0f"), _f(d["cpu_ms_per_frame_parallel"], ".2f"),
                     f"{_f(d.get('max_abs_diff_vs_software'))} / {_f(d.get('mean_abs_diff_vs_software'), '.2f')}",
                     ""])
    return [f"{r.get('file')}, {r.get('parallel')} threads at once:", ""] + _table(
        ["setting", "decoded on", "fps, 1 thread", "fps, all threads", "CPU ms / frame", "max / mean diff vs software",
         "note"], rows) + (["", f"NVDEC / software, all threads: {_f(r.get('nvdec_speedup_parallel'), '.2f')}x"]
                           if r.get("nvdec_speedup_parallel") else [])


def _compile(r: dict[str, Any]) -> list[str]:
    rows = []
    for d, modes in r.get("detectors", {}).items():
        for mode, e in modes.items():
            if not isinstance(e, dict):
                rows.append([d, mode, "", "", "", str(e)])
            elif "median_s" in e:
                rows.append([d, mode, _f(e["first_call_s"], ".1f"), _f(1000 * e["median_s"], ".1f"),
                             _f(e.get("speedup_vs_off"), ".2f"), _f(e.get("max_abs_dp_vs_off"), ".2g")])
            else:
                rows.append([d, mode, "", "", "", e.get("error") or e.get("skipped") or ""])
    return [f"precision {r.get('precision')}, median of {r.get('repeats')} calls after two:", ""] + _table(
        ["detector", "mode", "first call s", "ms / call", "speed-up vs off", "max abs dp vs off / error"], rows)


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "env": ("Machine", _env), "peak": ("Matmul peak", _peak), "tests": ("CUDA tests", _tests),
    "forwards": ("Detector forwards by precision", _forwards),
    "capacity": ("Capacity against the authors' loops (unpaced)", _capacity),
    "ladder": ("Streams in real time, and alert latency", _ladder),
    "decode": ("NVDEC against software decode", _decode),
    "compile": ("torch.compile and CUDA graphs against eager", _compile),
}


def render_summary(report: dict[str, Any]) -> str:
    """The Markdown summary of a GPU check report (:mod:`.gpu_check`)."""
    when = dt.datetime.fromtimestamp(report["started_at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# GPU check ({report['mode']}), {when}", "",
             f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget.", ""]
    lines += _table(["step", "status", "seconds", "error"],
                    [[n, e["status"], f"{e['seconds']:.0f} of {e['allowed_s']:.0f}", e.get("error") or ""]
                     for n, e in report["steps"].items()])
    for name, entry in report["steps"].items():
        result = entry.get("result")
        if not isinstance(result, dict) or name not in SECTIONS:
            continue
        title, render = SECTIONS[name]
        lines += ["", f"## {title}" + ("" if entry["status"] == "ok" else f" ({entry['status']}: partial)"), ""]
        try:
            lines += render(result)
        except (KeyError, TypeError, ValueError) as exc:  # a partial result may lack fields
            lines.append(f"(cannot render this step's result: {type(exc).__name__}: {exc})")
    return "\n".join(lines) + "\n"
