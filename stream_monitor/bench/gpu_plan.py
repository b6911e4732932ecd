"""What the GPU check runs: its steps, their time shares, and the two configurations.

:data:`GPU` is the real check (full-size detectors, 1080p, CUDA, bf16, within 8 minutes);
:data:`DRY` runs every step the same way on a CPU with the small detector preset and tiny
durations, so the suite can keep the check from rotting (``scripts/gpu-check.sh --dry``).
Times are seconds of wall time; sizes are frames, clips or pixels as named.

Budget: steps run in :data:`STEPS` order, each in its own process. A step may run for at most
``min(cap, remaining - sum of the floors of the steps after it)`` (floors and caps times
``time_scale``); one that would get less than its own floor is skipped, and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["gpu", "dry"]

# name -> (floor, cap) in seconds; the order is the order they run in: cheap facts first, the
# long measurements after, compilation (the likeliest to overrun) last.
STEPS: dict[str, tuple[float, float]] = {
    "env": (5.0, 30.0),
    "peak": (10.0, 30.0),
    "tests": (20.0, 90.0),
    "forwards": (25.0, 75.0),
    "capacity": (60.0, 140.0),
    "ladder": (60.0, 180.0),
    "decode": (10.0, 30.0),
    "compile": (25.0, 120.0),
}

# Tests that take a CUDA path when a GPU is present (and skip, or run their CPU half, without
# one): CUDA face detection, device alignment with pinned copies, the shared worker thread,
# autocast and torch.compile on CUDA, NVDEC. Node ids relative to the repository root.
CUDA_TESTS: tuple[str, ...] = (
    "tests/stream_monitor/test_cuda_paths.py",
    "tests/stream_monitor/test_faces_detect.py::test_mtcnn_finds_the_face_with_points_in_order",
    "tests/stream_monitor/test_hwaccel.py",
    "tests/stream_monitor/test_precision.py::test_fp16_needs_cuda",
    "tests/stream_monitor/test_precision.py::test_channels_last_where_it_pays_off_on_a_cpu",
)


@dataclass
class CheckSettings:
    """Every knob of one run of the check (see the step modules for what each measures)."""

    mode: Mode
    device: str  # "cuda" or "cpu"
    preset: str  # detector sizes: "full" (the authors') or "small" (stream_monitor.bench.presets)
    resolution: str  # the streams' (bench.scenario.parse_resolution)
    precision: str  # the monitor's detectors.precision in the capacity and ladder steps
    budget_s: float
    # Floors and caps of STEPS times this: the dry run's small steps on a shared 2-core machine
    # can take longer than the GPU's full ones, and it has time to spare.
    time_scale: float = 1.0
    fps: float = 30.0
    faces: int = 1
    # peak: square matmuls of these dtypes, n x n, about peak_seconds each
    peak_dtypes: tuple[str, ...] = ("bf16", "fp16", "tf32", "fp32")
    peak_n: int = 8192
    peak_seconds: float = 0.3
    # forwards: each detector at these precisions; batch = frames (caddm) or clips (sta, styleflow)
    forward_precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    forward_batch: dict[str, int] = field(default_factory=lambda: {"caddm": 32, "sta": 8, "styleflow": 4})
    forward_repeats: int = 5
    forward_warmup: int = 1  # untimed calls first (kernel selection, cuDNN autotuning)
    # capacity and ladder: the detectors the monitor runs (None: all three)
    bench_detectors: tuple[str, ...] | None = None
    # capacity: unpaced streams against the authors' loops (stream-monitor bench)
    capacity_streams: int = 8
    capacity_warmup_s: float = 8.0
    capacity_duration_s: float = 15.0
    capacity_baseline_s: float = 8.0  # >= StA's first two windows, (8 + 4) / 1.875 fps = 6.4 s
    # ladder: real-time streams, doubled from ladder_start, then bisected; latency at 80 % and 2x
    ladder_start: int = 8
    ladder_max: int = 256
    ladder_settle_s: float = 5.0
    ladder_measure_s: float = 8.0
    ladder_latency_s: float = 12.0
    ladder_drain_max_s: float = 12.0
    # decode: an H.264 file of decode_seconds, decoded alone and by decode_parallel threads at once
    decode_seconds: float = 4.0
    decode_parallel: int = 8
    # compile: the runners' torch.compile modes, per detector, in this order (what a GPU worker
    # would run first: CUDA graphs); a mode or detector the time does not reach is marked skipped
    compile_modes: tuple[str, ...] = ("off", "reduce-overhead", "default")
    compile_detectors: tuple[str, ...] = ("caddm", "sta", "styleflow")
    compile_repeats: int = 5
    tests: tuple[str, ...] = CUDA_TESTS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckSettings":
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # JSON lists
        return cls(**fields)


GPU = CheckSettings(mode="gpu", device="cuda", preset="full", resolution="1080p", precision="bf16", budget_s=480.0)

DRY = CheckSettings(
    mode="dry", device="cpu", preset="small", resolution="320x240", precision="bf16", budget_s=900.0, time_scale=3.0,
    peak_dtypes=("fp32", "bf16"), peak_n=256, peak_seconds=0.05,
    forward_precisions=("fp32", "bf16", "fp16"), forward_batch={"caddm": 2, "sta": 1, "styleflow": 1},
    forward_repeats=1, forward_warmup=0, bench_detectors=("caddm",),
    capacity_streams=1, capacity_warmup_s=1.5, capacity_duration_s=3.0, capacity_baseline_s=2.5,
    ladder_start=1, ladder_max=2, ladder_settle_s=1.0, ladder_measure_s=2.0, ladder_latency_s=3.0,
    ladder_drain_max_s=1.0,
    decode_seconds=1.0, decode_parallel=2,
    compile_modes=("off", "aot_eager"), compile_detectors=("caddm",), compile_repeats=2,
)
