"""``stream-monitor bench``: multi-stream throughput of the monitor against the authors' loops.

N streams (synthetic or files; any resolution, 720p30/1080p30 the reference cases; one or
two faces) run through the full service for a fixed time, paced in real time (or unpaced,
``--pace unpaced``: as fast as the monitor takes frames, which measures capacity), and the
authors' own inference loops run on the same device, weights and media
(:mod:`.baseline`). Modules: :mod:`.scenario` (media), :mod:`.presets` (detector sizes),
:mod:`.pipeline_run` (our side), :mod:`.baseline`, :mod:`.flops`, :mod:`.report`,
:mod:`.run` (the order). Speed is measured here, never asserted in tests. The prepared GPU
check (``scripts/gpu-check.sh``: :mod:`.gpu_check`, with :mod:`.gpu_plan`, :mod:`.gpu_steps`,
:mod:`.ladder` and :mod:`.gpu_summary`) runs this bench and the other GPU measurements in
one command.

The report (JSON; ``render_table`` prints the same numbers):

* ``meta``: ``version``, ``started_at`` (Unix s), ``torch``, ``threads``, ``machine``,
  ``python``, ``precision`` (ours), ``baseline_precision`` (always fp32), ``preset``,
  ``detectors``, ``models``, ``weights`` (``"random"`` or the directory), ``weights_note``,
  ``workdir``.
* ``scenario``: ``label``, ``streams``, ``source``, ``width``, ``height``, ``fps``, ``faces``,
  ``duration_s``, ``warmup_s``, ``pace`` (``realtime`` or ``unpaced``), ``realtime`` (bool).
* ``units``: the unit of each kind of number (text).
* ``flops``: ``peak`` {``flops_per_s``, ``dtype``, ``n``, ``device``}; ``per_unit``
  {detector: {``model``, ``per_frame``, ``per_window``}} (FLOPs); ``faces_per_frame``;
  ``required_per_stream`` {detector or ``faces``: FLOP/s one stream needs at the cards' rates}.
* ``pipeline`` (ours): ``wall_s``, ``device``, ``streams_sustained`` (count), ``streams``
  [{``id``, ``source_fps``, ``target_fps``, ``detect_fps`` (the face-detection rate the
  detectors need: see :mod:`.pipeline_run`), ``decoded_fps``, ``analysed_fps``, ``dropped`` {stage: frames or
  windows}, ``sustained``}], ``frames`` {``decoded_per_s``, ``analysed_per_s``, ``dropped``
  {stage: count}}, ``faces`` {``busy_s``, ``batches``, ``modes_per_s`` {full, region,
  fallback: frames per second}, ``mean_batch``}, ``detectors``
  {detector: {``model``, ``sample_fps``, ``window_len``, ``window_stride``,
  ``windows_scored``, ``windows_per_s``, ``windows_offered_per_s``, ``windows_dropped``,
  ``frames_computed``, ``busy_s``,
  ``batches``, ``mean_batch``, ``throughput``, ``saturated``, ``flops_per_s``}}, ``throughput_all``,
  ``busy_fraction``, ``gpu_utilization`` (CUDA + NVML, else null), ``alert_latency_s``
  {``count``, ``p50``, ``p99``}, ``flops`` {``detectors_per_s``, ``faces_per_s``,
  ``total_per_s``, ``mfu``, ``mfu_incl_faces``}.
* ``baseline`` (null with ``--no-baseline``): ``media_s``, ``detectors`` {detector:
  {``loop``, ``model``, ``wall_s``, ``phases_s`` {phase: s}, ``frames_decoded``,
  ``frames_detected``, ``frames_forwarded``, ``windows``, ``track_seconds``, ``throughput``,
  ``flops_per_s``, ``faces_flops_per_s``, ``mfu``, ``notes``}}, ``throughput_all``.
* ``ratio`` (null without a baseline): {detector: ours / baseline, ``all``: ours / baseline}.

Throughput unit everywhere: **track-seconds per second** (seconds of one face track's
video covered by scored windows, frames sampled at the detector's rate, per wall-clock
second); with realtime pacing ours is at most streams × faces, so a ratio measured
below saturation (every stream sustained, nothing dropped) is a lower bound. Unpaced, the
streams offer what the monitor takes and the baseline loops, which read the same media
unpaced, are compared at capacity.
"""

from .run import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
