"""``stream-monitor``: run, serve, predict, eval, synth, calibrate, alerts tail, weights, bench.

Exit codes: 0 success; 1 a runtime failure (a server unreachable, a port in use, a stream
that cannot be read); 2 bad usage, bad configuration, bad input or missing weights. An
expected failure prints one line, ``error: ...`` naming the flag, file, port or server, on
stderr and never a traceback; arguments are checked before any model loads. Logs go to
stderr (``--log-format json``: JSON lines); alerts printed without Redis go to stdout as
JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer

from .allocator import tune_allocator
from .config import DETECTOR_NAMES, Config, ConfigError, load_config
from .errors import SourceError, StreamMonitorError, WeightsError
from .logs import LEVELS, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real-time deepfake monitor for live video.")
alerts_app = typer.Typer(no_args_is_help=True, help="Follow alerts.")
weights_app = typer.Typer(no_args_is_help=True, help="Manage detector checkpoints.")
app.add_typer(alerts_app, name="alerts")
app.add_typer(weights_app, name="weights")

log = logging.getLogger("stream_monitor")


def _fail(message: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# Options every long-running command takes (typer reads the Annotated metadata).
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="DEBUG logs from stream-monitor's own loggers "
                                       "(libraries stay at INFO)")]
LogLevel = Annotated[Optional[str], typer.Option("--log-level", help=f"{', '.join(LEVELS)}: our loggers' level "
                                                 "(default: info; -v: debug)")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text, or json (one JSON object per line)")]
Host = Annotated[Optional[str], typer.Option("--host", help="address the API and /metrics listen on (api.host, "
                                             "metrics.host) (default: 127.0.0.1; other addresses need api.token)")]


def _setup_logging(verbose: bool, level: Optional[str] = None, fmt: str = "text") -> None:
    if fmt not in ("text", "json"):
        raise _fail(f"--log-format takes text or json; got {fmt!r}")
    if level is not None and level.lower() not in LEVELS:
        raise _fail(f"--log-level takes {', '.join(LEVELS)}; got {level!r}")
    setup_logging(level, verbose, cast(Any, fmt))


def _positive(flag: str, value: Optional[float]) -> None:
    """Refuse a zero or negative duration-like flag before anything loads."""
    if value is not None and not value > 0:
        raise _fail(f"{flag} must be a positive number of seconds; got {value:g}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from . import __version__

        try:
            text = version("stream-monitor")
        except PackageNotFoundError:
            text = __version__
        typer.echo(f"stream-monitor {text}")
        raise typer.Exit(0)


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                             help="print the version and exit")) -> None:
    """Real-time deepfake monitor for live video."""


def derive_stream_id(url: str, taken: set[str]) -> str:
    """A readable, unique stream id from a source URL or path."""
    if url.startswith("synthetic:"):
        base = "synthetic"
    elif "://" in url:
        rest = url.split("://", 1)[1].rsplit("@", 1)[-1]
        base = rest.strip("/").replace("/", "_").replace(":", "_")
    else:
        base = Path(url).stem
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).strip("._-")[:56] or "stream"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _overrides(detectors: Optional[str], weights_dir: Optional[Path], random_weights: Optional[bool],
               device: Optional[str], redis: Optional[str], alerts_jsonl: Optional[Path], threshold: Optional[float],
               metrics_port: Optional[int], api_port: Optional[int], realtime: Optional[bool],
               host: Optional[str] = None) -> dict[str, Any]:
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = o
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    if detectors is not None:
        names = [d.strip() for d in detectors.split(",") if d.strip()]
        bad = [d for d in names if d not in DETECTOR_NAMES]
        if bad or not names:
            raise _fail(f"--detectors takes a comma list of {', '.join(DETECTOR_NAMES)}; got {detectors!r}")
        put("detectors.enabled", names)
    put("detectors.weights_dir", str(weights_dir) if weights_dir else None)
    put("detectors.random_weights", random_weights)
    put("detectors.device", device)
    put("redis.url", redis)
    put("alerts.jsonl", str(alerts_jsonl) if alerts_jsonl else None)
    put("alerts.threshold", threshold)
    put("metrics.port", metrics_port)
    put("api.port", api_port)
    put("ingest.realtime", realtime)
    put("api.host", host)
    put("metrics.host", host)
    return o


def _config(config: Optional[Path], overrides: dict[str, Any], cpu_profile: bool = False) -> Config:
    """Load and validate; ``cpu_profile``: put :data:`.profiles.CPU_PROFILE` under a configuration
    that names no detectors when they would run on the CPU (``run``, ``serve``, ``predict``)."""
    from .profiles import PROFILE_NOTE
    from .profiles import cpu_profile as profile

    if config is not None and not config.is_file():
        raise _fail(f"--config {config}: no such file")
    applied: list[bool] = []

    def noted(data: dict[str, Any]) -> Optional[dict[str, Any]]:
        found = profile(data)
        applied.append(found is not None)
        return found

    try:
        cfg = load_config(config, overrides, profile=noted if cpu_profile else None)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if any(applied):
        logging.getLogger("stream_monitor.profiles").info(PROFILE_NOTE)
    return cfg


def _summary(handles: list[Any]) -> str:
    """The one-line account ``run`` prints on stderr when it stops."""
    frames = sum(h.pipeline.stats.frames_analysed for h in handles)
    faces = sum(h.pipeline.stats.faces for h in handles)
    tracks = sum(h.pipeline.stats.tracks_seen for h in handles)
    windows = sum(h.pipeline.stats.windows for h in handles)
    alerts = sum(h.pipeline.stats.alerts for h in handles)
    shed = sum(h.pipeline.stats.shed for h in handles)
    return (f"summary: {len(handles)} stream(s), {frames} frames analysed, {faces} faces, {tracks} tracks, "
            f"{windows} windows scored, {alerts} alert events, {shed} shed")


async def _run_monitor(cfg: Config, duration: Optional[float], until_streams_end: bool,
                       summary: bool = False) -> int:
    from .service import Service

    monitor = Service(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await monitor.start()
    except BaseException:
        await monitor.stop(grace=2.0)
        raise
    if monitor.api_port is not None:
        log.info("API listening on http://%s:%d", cfg.api.host, monitor.api_port)
    if duration is not None:
        log.info("running; stopping after %gs", duration)
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if until_streams_end:
        waiters.append(asyncio.ensure_future(monitor.wait_streams()))
    await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    handles = list(monitor.streams.values())  # stop() forgets them; their stats live on
    log.info("stopping")
    await monitor.stop()
    if summary:
        typer.echo(_summary(handles), err=True)
    return 0


_DETECTORS_HELP = "comma list of caddm,sta,styleflow"


@app.command()
def run(
    sources: list[str] = typer.Argument(..., help="file path, rtsp://, rtsps://, http(s):// or synthetic:"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default weights/)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="untrained detectors (plumbing checks)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    redis: Optional[str] = typer.Option(None, help="redis://host:port/db for alerts (else JSON lines on stdout)"),
    alerts_jsonl: Optional[Path] = typer.Option(None, help="also append alerts to this file"),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="alert threshold on the fused probability (default: 0.7)"),
    metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="serve /metrics on this port"),
    api_port: Optional[int] = typer.Option(None, min=0, max=65535, help="serve the HTTP API on this port"),
    host: Host = None,
    realtime: Optional[bool] = typer.Option(None, "--realtime/--no-realtime",
                                            help="pace files at their frame rate (default: realtime)"),
    duration: Optional[float] = typer.Option(None, help="stop after this many seconds (default: when the "
                                             "sources end)"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Monitor SOURCES until they end or --duration passes; a one-line summary goes to stderr.

    Without CUDA and without named detectors the CPU profile applies (CADDM ResNet-34 at 5
    analysed frames per second); --detectors or detectors.enabled override it."""
    _setup_logging(verbose, log_level, log_format)
    _positive("--duration", duration)
    from .ingest.base import check_url

    for url in sources:  # a missing file or a bad URL fails before anything loads
        try:
            check_url(url)
        except SourceError as exc:
            raise _fail(str(exc)) from None
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, device, redis, alerts_jsonl, threshold,
                                     metrics_port, api_port, realtime, host), cpu_profile=True)
    taken = {s.id for s in cfg.streams}
    streams = [s.model_dump() for s in cfg.streams]
    for url in sources:
        sid = derive_stream_id(url, taken)
        taken.add(sid)
        streams.append({"id": sid, "url": url})
    cfg = _config(config, _merge_streams(cfg, streams))
    # A fleet worker's streams may run elsewhere: it serves until stopped, like `serve`.
    raise typer.Exit(_main(cfg, duration, until_streams_end=not cfg.fleet.enabled, summary=True))


def _merge_streams(cfg: Config, streams: list[dict[str, str]]) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["streams"] = streams
    return data


def _main(cfg: Config, duration: Optional[float], until_streams_end: bool, summary: bool = False) -> int:
    code = _serve_until_done(cfg, duration, until_streams_end, summary)
    busy = [t.name for t in threading.enumerate() if t.name.startswith("inference") and t.is_alive()]
    if busy:
        # A worker is still inside a long torch call (a full-size window on a CPU). Everything
        # is delivered and closed; exit now rather than let the interpreter tear down under it.
        log.warning("exiting while %s finish(es) a batch", ", ".join(busy))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _serve_until_done(cfg: Config, duration: Optional[float], until_streams_end: bool, summary: bool) -> int:
    try:
        return asyncio.run(_run_monitor(cfg, duration, until_streams_end, summary))
    except WeightsError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except StreamMonitorError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default: weights)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="untrained detectors (plumbing checks)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: auto)"),
    redis: Optional[str] = typer.Option(None, help="redis://host:port/db for alerts (else JSON lines on stdout)"),
    alerts_jsonl: Optional[Path] = typer.Option(None, help="also append alerts to this file"),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="alert threshold on the fused probability (default: 0.7)"),
    metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="serve /metrics on this port"),
    api_port: Optional[int] = typer.Option(None, min=0, max=65535, help="HTTP API port (default: 8080)"),
    host: Host = None,
    predict_root: Optional[list[Path]] = typer.Option(None, help="a directory POST /predict may read (repeatable)"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """The long-running service: HTTP API, metrics, streams from the config and added at run time.
    The API answers while the models load (/readyz: 503 until they are ready)."""
    _setup_logging(verbose, log_level, log_format)
    overrides = _overrides(detectors, weights_dir, random_weights, device, redis, alerts_jsonl, threshold,
                           metrics_port, api_port, None, host)
    if predict_root:
        overrides.setdefault("api", {})["predict_roots"] = [str(p) for p in predict_root]
    cfg = _config(config, overrides, cpu_profile=True)
    if cfg.api.port is None:
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": 8080})})
    raise typer.Exit(_main(cfg, None, until_streams_end=False))


@app.command()
def predict(
    video: str = typer.Argument(..., help="a video file or URL"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default: weights)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="untrained detectors (plumbing checks)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: auto)"),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="FAKE at or above this fused probability (default: 0.7)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Score one video offline and print JSON."""
    _setup_logging(verbose, log_level, log_format)
    from .ingest.base import check_url

    try:
        check_url(video)  # a missing file or a bad URL fails here, before any model loads
    except SourceError as exc:
        raise _fail(str(exc)) from None
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, device, None, None, threshold,
                                     None, None, False), cpu_profile=True)

    async def go() -> dict[str, Any]:
        from .inference.engine import Engine
        from .metrics import Metrics
        from .predict import predict_video

        engine = Engine(cfg, Metrics())
        await asyncio.to_thread(engine.load)
        await engine.start()
        try:
            with _progress_bar(progress, "predict", "frame") as bar:
                return await predict_video(engine, cfg, video, on_frame=bar.update)
        finally:
            await engine.stop()

    try:
        result = asyncio.run(go())
    except WeightsError as exc:
        raise _fail(str(exc)) from None
    except SourceError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(json.dumps(result))


def _progress_bar(enabled: bool, desc: str, unit: str, total: Optional[int] = None) -> Any:
    """A tqdm bar on stderr (a context manager with ``update(n=1)``); disabled: does nothing."""
    from tqdm import tqdm

    # Only on a terminal: a log file or a test's pipe would get carriage-return debris.
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled or not sys.stderr.isatty(),
                mininterval=0.5,
                dynamic_ncols=True, leave=False)


@alerts_app.command("tail")
def alerts_tail(
    redis: str = typer.Option(..., help="redis://host:port/db"),
    stream: Optional[str] = typer.Option(None, help="only this stream id"),
    prefix: str = typer.Option("deepfake", help="Redis key prefix"),
    history: int = typer.Option(0, min=0, help="first print the last N alerts from the durable log"),
    count: Optional[int] = typer.Option(None, min=1, help="exit after this many live alerts (default: follow until "
                                        "interrupted)"),
    reject_stale: bool = typer.Option(True, "--reject-stale/--accept-stale",
                                      help="skip events whose lease_epoch is below the highest seen for their "
                                           "stream (a worker that lost the stream to a later owner)"),
) -> None:
    """Follow alerts live (Pub/Sub), optionally after the last N from the Stream."""
    import redis as redis_lib

    from .alerts.tail import tail
    from .ingest.urls import redact

    def skipped(line: str) -> None:
        typer.echo(f"skipped an event of a stale owner: {line}", err=True)

    try:
        asyncio.run(tail(redis, prefix, stream, history, count, lambda line: typer.echo(line),
                         reject_stale=reject_stale, rejected=skipped))
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # redis-py's URL parser
        raise _fail(f"--redis {redact(redis)}: {exc}") from None
    except (OSError, redis_lib.RedisError) as exc:
        raise _fail(f"cannot reach Redis at {redact(redis)}: {exc}", code=1) from None


_WEIGHTS_DIR_HELP = "checkpoint directory (default: the config's detectors.weights_dir, else weights)"


def _weights_config(config: Optional[Path], weights_dir: Optional[Path]) -> Config:
    return _config(config, {"detectors": {"weights_dir": str(weights_dir)}} if weights_dir is not None else {})


@weights_app.command("list")
def weights_list(weights_dir: Optional[Path] = typer.Option(None, help=_WEIGHTS_DIR_HELP),
                 config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file: "
                                                       "its weights_dir and its detectors' models")) -> None:
    """Every registered variant's expected files, whether they are present, and their source
    (the models the configuration uses are marked)."""
    from .weights import describe

    cfg = _weights_config(config, weights_dir)
    for line in describe(cfg.detectors.weights_dir, cfg.detectors):
        typer.echo(line)


@weights_app.command("verify")
def weights_verify(weights_dir: Optional[Path] = typer.Option(None, help=_WEIGHTS_DIR_HELP),
                   detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
                   config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file: "
                                                         "its weights_dir, checkpoints and models")) -> None:
    """Check every variant with files present (and each of the configuration's detectors, present
    or not): read safely, load strictly, print sha256. Exit 2 if any fails."""
    from .weights import verify

    if detectors is not None:
        names = [d.strip() for d in detectors.split(",") if d.strip()]
        if not names or any(d not in DETECTOR_NAMES for d in names):
            raise _fail(f"--detectors takes a comma list of {', '.join(DETECTOR_NAMES)}; got {detectors!r}")
    else:
        names = list(DETECTOR_NAMES)
    cfg = _weights_config(config, weights_dir)
    ok = True
    for line, good in verify(cfg.detectors.weights_dir, names, cfg.detectors):
        ok &= good
        typer.echo(line)
    raise typer.Exit(0 if ok else 2)


@weights_app.command("import")
def weights_import(file: Path = typer.Argument(..., help="an authors' checkpoint or a safetensors file"),
                   detector: str = typer.Option(..., help="caddm, sta, styleflow_psp_encoder, ... or a model name"),
                   weights_dir: Path = typer.Option(Path("weights"), help="where the converted file goes"),
                   progress: bool = typer.Option(True, "--progress/--no-progress", help="progress on stderr")) -> None:
    """Check FILE safely, convert it to safetensors under canonical keys into the weights dir
    (written mode 0644: readable by the container's user)."""
    from .weights import import_checkpoint

    try:
        with _progress_bar(progress, f"import {file.name}", "step", total=2) as bar:
            dst, digest = import_checkpoint(file, detector, weights_dir, on_step=bar.update)
    except (WeightsError, StreamMonitorError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write under {weights_dir}: {exc.strerror or exc}", code=1) from None
    typer.echo(f"imported {file} -> {dst} (sha256 {digest})")


@weights_app.command("fetch")
def weights_fetch(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME",
                                                help="caddm_efficientnet_b4, caddm_efficientnet_b3, caddm_resnet34, "
                                                     "sta_clip_vitl14, styleflow_psp_encoder, or caddm / sta"),
    accept_licence: bool = typer.Option(False, "--accept-licence",
                                        help="accept a non-commercial licence (StA, pSp); required for those files"),
    offline: bool = typer.Option(False, "--offline", help="never download: only check the files already present"),
    weights_dir: Path = typer.Option(Path("weights"), help="where the files go"),
    base_url: Optional[str] = typer.Option(None, envvar="STREAM_MONITOR_WEIGHTS_BASE_URL", hidden=True),
) -> None:
    """Download the authors' public checkpoints from Google Drive (resumable), check them like
    `import`, and record their size and sha256 in WEIGHTS_DIR/manifest.json (later fetches must match).
    Files already present are only checked. Exit 1 on a network failure (run again to resume)."""
    from .drive_download import DownloadError, DriveClient
    from .weights_fetch import fetch
    from .weights_sources import fetchable_names

    if not names:
        raise _fail(f"name at least one checkpoint to fetch: {', '.join(fetchable_names())}")
    try:
        fetched = fetch(names, weights_dir, accept_licence=accept_licence, offline=offline,
                        client=DriveClient(base_url), say=lambda line: typer.echo(line, err=True))
    except WeightsError as exc:
        raise _fail(str(exc)) from None
    except DownloadError as exc:
        raise _fail(str(exc), code=1) from None
    except OSError as exc:
        raise _fail(f"cannot write under {weights_dir}: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; run the command again to resume the download", code=1) from None
    for f in fetched:
        typer.echo(f"{f.state} {f.model}: {f.path} ({f.size} bytes, sha256 {f.sha256})")


@app.command()
def bench(
    streams: int = typer.Option(1, min=1, help="streams run at once"),
    source: str = typer.Option("synthetic", help="synthetic or file (an H.264 MP4 written at bench time)"),
    resolution: str = typer.Option("720p", help="720p, 1080p, 240p, ... or WIDTHxHEIGHT"),
    fps: float = typer.Option(30.0, help="source frame rate"),
    faces: int = typer.Option(1, min=1, max=2, help="faces per stream (1 or 2)"),
    pace: str = typer.Option("realtime", help="realtime (live sources, drops under load) or unpaced (as fast as "
                             "the monitor takes frames: its capacity, comparable with the baseline's loops)"),
    duration: float = typer.Option(20.0, help="seconds measured"),
    warmup: float = typer.Option(5.0, min=0.0, help="seconds run before the measurement starts"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    preset: str = typer.Option("full", help="detector sizes: full (the authors') or small (plumbing checks)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: the config's, auto)"),
    precision: Optional[str] = typer.Option(None, help="our precision: fp32 (default), bf16 or fp16; the "
                                            "baseline runs fp32"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="also run the authors' loops"),
    baseline_seconds: Optional[float] = typer.Option(None, help="media seconds for the baseline "
                                                     "(default: --duration, at least two windows each)"),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoints (default: random weights, same compute)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON report here ('-': stdout)"),
    workdir: Optional[Path] = typer.Option(None, help="media and baseline files (default: a temporary dir)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr (a terminal)"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Throughput of N streams through the monitor vs the authors' inference loops."""
    _setup_logging(verbose, log_level, log_format)
    _positive("--duration", duration)
    _positive("--fps", fps)
    _positive("--baseline-seconds", baseline_seconds)
    from .bench import BenchOptions, run_bench
    from .bench.presets import PRESETS
    from .bench.report import render_table
    from .bench.scenario import Pace, parse_resolution

    names = [d.strip() for d in detectors.split(",") if d.strip()] if detectors is not None else None
    if names is not None and (not names or any(d not in DETECTOR_NAMES for d in names)):
        raise _fail(f"--detectors takes a comma list of {', '.join(DETECTOR_NAMES)}; got {detectors!r}")
    if source not in ("synthetic", "file") or pace not in ("realtime", "unpaced") \
            or device not in (None, "auto", "cpu", "cuda") or precision not in (None, "fp32", "bf16", "fp16") \
            or preset not in PRESETS:
        raise _fail("--source synthetic|file, --pace realtime|unpaced, --device auto|cpu|cuda, "
                    f"--precision fp32|bf16|fp16, --preset {'|'.join(PRESETS)}")
    try:
        parse_resolution(resolution)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    opts = BenchOptions(streams=streams, source=source, resolution=resolution,  # type: ignore[arg-type]
                        fps=fps, faces=faces, pace=cast(Pace, pace), duration_s=duration, warmup_s=warmup,
                        detectors=tuple(names) if names is not None else None,
                        preset=preset, device=device, precision=precision, baseline=baseline,
                        baseline_seconds=baseline_seconds, weights_dir=weights_dir, config=config,
                        workdir=workdir, progress=progress)
    try:
        report = run_bench(opts)
    except (ConfigError, WeightsError) as exc:
        raise _fail(str(exc)) from None
    text = json.dumps(report, indent=2)
    if json_out is not None and str(json_out) == "-":
        typer.echo(render_table(report), err=True)
        typer.echo(text)
    else:
        typer.echo(render_table(report))
        if json_out is not None:
            json_out.write_text(text + "\n", encoding="utf-8")
    if any(t.name.startswith("inference") and t.is_alive() for t in threading.enumerate()):
        # A worker is still inside a long batch (full-size models on a CPU): the report is out.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@app.command()
def calibrate(
    scores: Path = typer.Argument(..., help="scores.jsonl from `stream-monitor eval` (one line per video and detector)"),
    out: Path = typer.Option(..., "--out", "-o", help="calibration file to write (detectors.calibration)"),
    fpr: float = typer.Option(0.01, help="target false-positive rate on real videos for every threshold"),
    method: str = typer.Option("platt", help="platt (logistic on the logit) or isotonic"),
    level: str = typer.Option("frame", help="frame: each frame/window probability (what live alerts "
                              "threshold); video: each video's score"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the configuration the scores were made "
                                          "with: its detectors and model ids are recorded"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default weights/)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="the scores came from random "
                                                  "weights (plumbing checks)"),
) -> None:
    """Fit calibrated probabilities, fusion and thresholds at a target FPR from SCORES into --out."""
    from .calibration import LEVELS, METHODS, ScoresError, fit_calibration, read_scores, save_calibration

    if not 0.0 < fpr < 1.0:
        raise _fail(f"--fpr must be in (0, 1); got {fpr}")
    if method not in METHODS or level not in LEVELS:
        raise _fail(f"--method {'|'.join(METHODS)}, --level {'|'.join(LEVELS)}")
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, None, None, None, None, None, None,
                                     None))
    if not out.parent.is_dir():
        raise _fail(f"{out}: no such directory {out.parent}")
    try:
        rows, digest = read_scores(scores)
        from .inference.engine import model_ids_for

        models = model_ids_for(cfg.detectors)
        calibration = fit_calibration(rows, models, fpr=fpr, method=method, level=level,  # type: ignore[arg-type]
                                      source={"scores": str(scores), "sha256": digest,
                                              "videos": len({r.video for r in rows})})
        save_calibration(calibration, out)
    except (ScoresError, WeightsError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror or exc}") from None
    typer.echo(f"{calibration.method} calibration at {calibration.level} level, target FPR {fpr:g} -> {out}")
    typer.echo(f"{'detectors':<24} {'threshold':>9} {'FPR':>7} {'TPR':>7} {'real':>8} {'fake':>8}")
    entries = [(d, c) for d, c in sorted(calibration.detectors.items())] + \
        [("+".join(m.detectors), m) for m in sorted(calibration.fused.values(), key=lambda m: m.detectors)]
    for name, entry in entries:
        typer.echo(f"{name:<24} {entry.threshold:>9.6f} {entry.fpr:>7.4f} {entry.tpr:>7.4f} "
                   f"{entry.n_real:>8} {entry.n_fake:>8}")
        if entry.fpr > fpr:
            typer.echo(f"warning: {name}: real samples score 1.0 too often to reach FPR {fpr:g}", err=True)


def _exit_when_done(code: int) -> None:
    """Exit with ``code``; immediately if an inference worker is still inside a long batch
    (everything is written by then), rather than let the interpreter tear down under it."""
    if any(t.name.startswith("inference") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command("eval")
def eval_dataset(
    dataset: Path = typer.Argument(..., help="a FaceForensics++, Celeb-DF v2 or DFDC folder, a DeepfakeBench "
                                   "dataset .json, or a path,label[,group] .csv"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for scores.jsonl, metrics.json, report.md, roc.png, "
                             "hist.png (and the cache)"),
    layout: str = typer.Option("auto", help="auto, ffpp, celebdf, dfdc, deepfakebench or csv"),
    compression: str = typer.Option("c23", help="FF++ / DeepfakeBench compression level: c23, c40 or raw"),
    methods: Optional[str] = typer.Option(None, help="FF++: comma list of manipulation folders "
                                          "(default: all present but DeepFakeDetection)"),
    split: str = typer.Option("test", help="DeepfakeBench JSON: the split evaluated"),
    split_file: Optional[Path] = typer.Option(None, help="FF++: a split JSON (e.g. test.json) to keep"),
    root: Optional[Path] = typer.Option(None, help="DeepfakeBench JSON: the folder its frame paths are under "
                                        "(default: the JSON's)"),
    cache: Optional[Path] = typer.Option(None, help="score cache (default OUT/cache.sqlite); share it between "
                                         "runs and output folders"),
    jobs: int = typer.Option(1, min=1, max=64, help="videos scored at once (their windows batch together)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar with ETA on stderr"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default: weights)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="untrained detectors (plumbing "
                                                  "checks)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="decision threshold (default: alerts.threshold)"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Measure detection on a labelled dataset through the live path (lossless, cached, resumable)."""
    import sqlite3

    _setup_logging(verbose, log_level, log_format)
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, device, None, None, threshold,
                                     None, None, False))
    from .evaluation.datasets import DatasetError, load_dataset

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    try:
        data = load_dataset(dataset, layout, compression, names, split, root, split_file)
    except DatasetError as exc:
        raise _fail(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out}: exists and is not a folder")
    counts = data.counts()
    log.info("%s: %s layout, %d videos (%d real, %d fake)", dataset, data.layout, len(data.samples),
             counts["real"], counts["fake"])
    from .evaluation.run import EvalOptions, run_eval  # torch, sklearn: only once the dataset is valid

    try:
        doc = run_eval(cfg, data, dataset, EvalOptions(out=out, cache=cache, jobs=jobs, progress=progress))
    except WeightsError as exc:
        raise _fail(str(exc)) from None
    except (StreamMonitorError, OSError, sqlite3.Error) as exc:
        raise _fail(str(exc), code=1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished videos are cached; rerun the same command to resume", err=True)
        _exit_when_done(130)
    typer.echo((out / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {out}/scores.jsonl, metrics.json, report.md, roc.png, hist.png "
               f"({len(doc['unreadable'])} unreadable)", err=True)
    _exit_when_done(0)


@app.command("finetune")
def finetune_detector(
    dataset: Path = typer.Argument(..., help="labelled videos, as eval reads them: a FaceForensics++ folder (e.g. "
                                   "synth output), Celeb-DF v2, DFDC, a DeepfakeBench .json or a .csv"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for <model>.safetensors, config.yaml, "
                             "finetune.json, checkpoint/ and the crop and face caches"),
    detector: str = typer.Option("caddm", help="caddm or sta"),
    steps: int = typer.Option(200, min=1, help="optimizer steps in all (a resumed run continues to this many)"),
    batch_size: int = typer.Option(8, min=1, help="crops (CADDM) or clips (StA) per step"),
    lr: Optional[float] = typer.Option(None, help="learning rate (default: the authors': CADDM 3.6e-4 with their "
                                       "step-downs, StA 2e-4)"),
    val_fraction: float = typer.Option(0.2, help="share of identities held out for validation (0: none)"),
    val_every: int = typer.Option(50, min=1, help="validate every this many steps (and at the end)"),
    checkpoint_every: int = typer.Option(50, min=1, help="write OUT/checkpoint every this many steps"),
    seed: int = typer.Option(0, help="seed of the batches, dropout and augmentations (a resumed run repeats them)"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint"),
    stop_at: Optional[int] = typer.Option(None, help="checkpoint and stop at this step (continue with --resume)"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="the authors' training augmentations"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="mixed precision on CUDA (fp32 on a CPU regardless)"),
    layout: str = typer.Option("auto", help="auto, ffpp, celebdf, dfdc, deepfakebench or csv"),
    compression: str = typer.Option("c23", help="FF++ / DeepfakeBench compression level: c23, c40 or raw"),
    split: str = typer.Option("train", help="DeepfakeBench JSON: the split trained on"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar with loss and validation AUC"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file (the detector's "
                                          "model, overrides and start checkpoint; faces)"),
    weights_dir: Optional[Path] = typer.Option(None, help="checkpoint directory of the start weights "
                                               "(default: weights)"),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="start from untrained weights"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Fine-tune CADDM or StA on labelled videos; writes safetensors that eval and run load."""
    _setup_logging(verbose, log_level, log_format)
    if detector not in ("caddm", "sta"):
        raise _fail(f"--detector {detector!r}: finetune trains caddm or sta")
    cfg = _config(config, _overrides(None, weights_dir, random_weights, device, None, None, None, None, None, None))
    from .evaluation.datasets import DatasetError, load_dataset

    try:
        data = load_dataset(dataset, layout, compression, None, split)
    except DatasetError as exc:
        raise _fail(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out}: exists and is not a folder")
    from .training.loop import FinetuneError, FinetuneOptions, finetune  # torch: only once the dataset is valid

    opts = FinetuneOptions(out=out, detector=detector, steps=steps, batch_size=batch_size, lr=lr,
                           val_fraction=val_fraction, val_every=val_every, checkpoint_every=checkpoint_every,
                           seed=seed, resume=resume, stop_at=stop_at, augment=augment, amp=amp, progress=progress)
    try:
        doc = finetune(cfg, data, opts)
    except (WeightsError, DatasetError, FinetuneError) as exc:
        raise _fail(str(exc)) from None
    except (StreamMonitorError, OSError) as exc:
        raise _fail(str(exc), code=1) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: continue from the last checkpoint with --resume --out {out}", err=True)
        _exit_when_done(130)
    if doc.get("stopped"):
        typer.echo(f"stopped at step {doc['steps']}; checkpoint in {out}/checkpoint (continue with --resume)")
    else:
        final = doc["final_val"]
        auc = "n/a" if final is None else f"{final['auc']:.4f} on {final['n']} videos"
        data_arg = f"{out}/val.csv" if doc["val"] else "DATASET"
        typer.echo(f"wrote {doc['weights']} (step {doc['steps']}, validation video AUC {auc}); "
                   f"measure it with: stream-monitor eval {data_arg} --config {out}/config.yaml --out EVAL_DIR")
    _exit_when_done(0)


@app.command("synth")
def synth(
    real_videos: Path = typer.Argument(..., help="a folder of real face videos (searched recursively)"),
    out: Path = typer.Argument(..., help="an empty or new folder: FF++ layout, manifest.json, manifest.csv"),
    methods: str = typer.Option("vb,mfs,sbi", help="comma list: vb (StA video-level blending), mfs (CADDM "
                                "multi-scale facial swap), sbi (per-frame self-blending)"),
    seed: int = typer.Option(0, help="random seed (same inputs and seed: same videos)"),
    compression: str = typer.Option("c23", help="raw (lossless), c23 or c40: the H.264 CRF of every output"),
    max_seconds: Optional[float] = typer.Option(None, help="use at most this many seconds of each video"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration file (faces.*)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (face detection)"),
    verbose: Verbose = False,
    log_level: LogLevel = None,
    log_format: LogFormat = "text",
) -> None:
    """Make labelled pseudo-fake videos from real ones (a test and adaptation aid, not real deepfakes)."""
    _setup_logging(verbose, log_level, log_format)
    cfg = _config(config, _overrides(None, None, None, device, None, None, None, None, None, None))
    from .synth.build import SynthError, SynthOptions, check_inputs, synthesize

    opts = SynthOptions(methods=tuple(m.strip() for m in methods.split(",") if m.strip()), seed=seed,
                        compression=compression, max_seconds=max_seconds)
    try:
        check_inputs(real_videos, out, opts)
    except (SynthError, SourceError) as exc:
        raise _fail(str(exc)) from None
    try:
        manifest = synthesize(real_videos, out, cfg, opts, progress)
    except StreamMonitorError as exc:
        raise _fail(str(exc), code=1) from None
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", code=1) from None
    fakes = sum(e["label"] for e in manifest["videos"])
    typer.echo(f"wrote {len(manifest['videos']) - fakes} real and {fakes} pseudo-fake videos to {out} "
               f"(manifest.json, manifest.csv)")


def main() -> None:
    """The console entry point: click's usage errors (a bad value, a missing option) become one
    ``error:`` line and exit 2, like every other expected failure."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    tune_allocator()  # before any thread starts: see stream_monitor.allocator
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError:
        code = 2  # typer has printed the help
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)  # usage errors know their command
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}{where}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
