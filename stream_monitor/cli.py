"""``stream-monitor``: run, serve, predict, alerts tail, weights.

Exit codes: 0 success; 1 a runtime failure; 2 bad usage, bad configuration or missing
weights (the message names the files and where they come from). Logs go to stderr;
alerts printed without Redis go to stdout as JSON lines.
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
from typing import Any, Optional

import typer

from .config import DETECTOR_NAMES, Config, ConfigError, load_config
from .errors import SourceError, StreamMonitorError, WeightsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real-time deepfake monitor for live video.")
alerts_app = typer.Typer(no_args_is_help=True, help="Follow alerts.")
weights_app = typer.Typer(no_args_is_help=True, help="Manage detector checkpoints.")
app.add_typer(alerts_app, name="alerts")
app.add_typer(weights_app, name="weights")

log = logging.getLogger("stream_monitor")


def _fail(message: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
               metrics_port: Optional[int], api_port: Optional[int], realtime: Optional[bool]) -> dict[str, Any]:
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
    return o


def _config(config: Optional[Path], overrides: dict[str, Any]) -> Config:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


async def _run_monitor(cfg: Config, duration: Optional[float], until_streams_end: bool) -> int:
    from .app import Monitor

    monitor = Monitor(cfg)
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
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if until_streams_end:
        waiters.append(asyncio.ensure_future(monitor.wait_streams()))
    await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    log.info("stopping")
    await monitor.stop()
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
    threshold: Optional[float] = typer.Option(None, help="alert threshold on the fused probability"),
    metrics_port: Optional[int] = typer.Option(None, help="serve /metrics on this port"),
    api_port: Optional[int] = typer.Option(None, help="serve the HTTP API on this port"),
    realtime: Optional[bool] = typer.Option(None, "--realtime/--no-realtime", help="pace files at their frame rate"),
    duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Monitor SOURCES until they end or --duration passes."""
    _setup_logging(verbose)
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, device, redis, alerts_jsonl, threshold,
                                     metrics_port, api_port, realtime))
    from .ingest.base import check_url

    taken = {s.id for s in cfg.streams}
    streams = [s.model_dump() for s in cfg.streams]
    for url in sources:
        try:
            check_url(url)
        except SourceError as exc:
            raise _fail(str(exc)) from None
        sid = derive_stream_id(url, taken)
        taken.add(sid)
        streams.append({"id": sid, "url": url})
    cfg = _config(config, _merge_streams(cfg, streams))
    raise typer.Exit(_main(cfg, duration, until_streams_end=True))


def _merge_streams(cfg: Config, streams: list[dict[str, str]]) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["streams"] = streams
    return data


def _main(cfg: Config, duration: Optional[float], until_streams_end: bool) -> int:
    code = _serve_until_done(cfg, duration, until_streams_end)
    busy = [t.name for t in threading.enumerate() if t.name.startswith("inference") and t.is_alive()]
    if busy:
        # A worker is still inside a long torch call (a full-size window on a CPU). Everything
        # is delivered and closed; exit now rather than let the interpreter tear down under it.
        log.warning("exiting while %s finish(es) a batch", ", ".join(busy))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _serve_until_done(cfg: Config, duration: Optional[float], until_streams_end: bool) -> int:
    try:
        return asyncio.run(_run_monitor(cfg, duration, until_streams_end))
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
    weights_dir: Optional[Path] = typer.Option(None),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights"),
    device: Optional[str] = typer.Option(None),
    redis: Optional[str] = typer.Option(None),
    alerts_jsonl: Optional[Path] = typer.Option(None),
    threshold: Optional[float] = typer.Option(None),
    metrics_port: Optional[int] = typer.Option(None),
    api_port: Optional[int] = typer.Option(None, help="HTTP API port (default 8080)"),
    predict_root: Optional[list[Path]] = typer.Option(None, help="a directory POST /predict may read (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """The long-running service: HTTP API, metrics, streams from the config and added at run time."""
    _setup_logging(verbose)
    overrides = _overrides(detectors, weights_dir, random_weights, device, redis, alerts_jsonl, threshold,
                           metrics_port, api_port, None)
    if predict_root:
        overrides.setdefault("api", {})["predict_roots"] = [str(p) for p in predict_root]
    cfg = _config(config, overrides)
    if cfg.api.port is None:
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": 8080})})
    raise typer.Exit(_main(cfg, None, until_streams_end=False))


@app.command()
def predict(
    video: str = typer.Argument(..., help="a video file or URL"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP),
    weights_dir: Optional[Path] = typer.Option(None),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights"),
    device: Optional[str] = typer.Option(None),
    threshold: Optional[float] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score one video offline and print JSON."""
    _setup_logging(verbose)
    cfg = _config(config, _overrides(detectors, weights_dir, random_weights, device, None, None, threshold,
                                     None, None, False))

    async def go() -> dict[str, Any]:
        from .inference.engine import Engine
        from .metrics import Metrics
        from .predict import predict_video

        engine = Engine(cfg, Metrics())
        await asyncio.to_thread(engine.load)
        await engine.start()
        try:
            return await predict_video(engine, cfg, video)
        finally:
            await engine.stop()

    try:
        result = asyncio.run(go())
    except WeightsError as exc:
        raise _fail(str(exc)) from None
    except SourceError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(json.dumps(result))


@alerts_app.command("tail")
def alerts_tail(
    redis: str = typer.Option(..., help="redis://host:port/db"),
    stream: Optional[str] = typer.Option(None, help="only this stream id"),
    prefix: str = typer.Option("deepfake", help="Redis key prefix"),
    history: int = typer.Option(0, help="first print the last N alerts from the durable log"),
    count: Optional[int] = typer.Option(None, help="exit after this many live alerts"),
) -> None:
    """Follow alerts live (Pub/Sub), optionally after the last N from the Stream."""
    from .alerts.tail import tail

    try:
        asyncio.run(tail(redis, prefix, stream, history, count, lambda line: typer.echo(line)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise _fail(f"cannot reach Redis: {exc}", code=1) from None


@weights_app.command("list")
def weights_list(weights_dir: Path = typer.Option(Path("weights"))) -> None:
    """Each detector's expected files, whether they are present, and their source."""
    from .weights import describe

    for line in describe(weights_dir):
        typer.echo(line)


@weights_app.command("verify")
def weights_verify(weights_dir: Path = typer.Option(Path("weights")),
                   detectors: Optional[str] = typer.Option(None, help=_DETECTORS_HELP)) -> None:
    """Read every present checkpoint safely and check it loads strictly; print sha256."""
    from .weights import verify

    names: list[str] = [d.strip() for d in detectors.split(",")] if detectors else list(DETECTOR_NAMES)
    ok = True
    for line, good in verify(weights_dir, names):
        ok &= good
        typer.echo(line)
    raise typer.Exit(0 if ok else 2)


@weights_app.command("import")
def weights_import(file: Path = typer.Argument(..., help="an authors' checkpoint or a safetensors file"),
                   detector: str = typer.Option(..., help="caddm, sta, styleflow_psp_encoder, ... or a model name"),
                   weights_dir: Path = typer.Option(Path("weights"))) -> None:
    """Check FILE safely, convert it to safetensors under canonical keys into the weights dir."""
    from .weights import import_checkpoint

    try:
        dst, digest = import_checkpoint(file, detector, weights_dir)
    except (WeightsError, StreamMonitorError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"imported {file} -> {dst} (sha256 {digest})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
