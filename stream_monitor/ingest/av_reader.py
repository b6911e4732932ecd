"""Demux and decode the video stream of a URL or file with PyAV, in the caller's thread.

Shared by the RTSP and file sources. Contract of :func:`read_video`:

- opens the container inside the generator (so the opening, which can block for up to
  the open timeout, happens in the decode thread, never on the asyncio loop);
- demuxes **only the first video stream** (a damaged audio track cannot stop the video);
- yields :class:`~stream_monitor.types.Frame` with ``seq`` counting from 0, ``pts`` the
  frame's stream time in seconds (``frame.time``, put on the frame grid when within 1.5 clock
  ticks of it: :func:`frame_time`; when missing, the previous pts plus one frame period,
  i.e. ``index / rate`` for a stream without timestamps), ``arrival`` the
  wall-clock time after decoding and ``image`` uint8 RGB ``[H, W, 3]``;
- with ``pace=True`` sleeps so frames leave at their pts rate (real-time file playback); a
  callable ``pace`` is asked once the container is open (after ``on_open``);
- returns at end of stream or when ``stop`` is set (checked between frames), and always
  closes the container itself: closing it from another thread while FFmpeg is inside a
  read would be a use-after-free;
- raises :class:`~stream_monitor.errors.SourceError` with the (redacted) URL and the reason
  for open failures, timeouts, read errors and media it cannot decode;
- never decodes a picture larger than ``max_pixels`` (``ingest.max_pixels``, width × height);
- yields pictures **upright**: a display matrix (a phone's portrait clip carries "rotate 90"
  in its container; an H.264 display-orientation SEI gives the same) is applied, see
  :func:`upright_image`.

Rotation: FFmpeg puts the display matrix of the stream (MP4/MOV ``tkhd`` matrix, Matroska
projection) and of display-orientation SEI on every decoded frame as DISPLAYMATRIX side
data; PyAV's ``VideoFrame.rotation`` reads its rotation, counterclockwise degrees. Frames
are turned by that many quarter turns with ``np.rot90`` (exact: no resampling), as
``ffmpeg``'s own autorotation shows them; width and height swap for 90 and 270. A matrix
that is not a multiple of 90° is rounded to the nearest quarter turn; flips are ignored.

Picture size: FFmpeg's own ``max_pixels`` limit is set on the stream probing inside
``av.open`` and on the decoder, so a larger picture is refused before its buffer is allocated
(a hostile 8192 × 8192 PNG costs a few MB, not hundreds). A size the container or codec
headers state (H.264, HEVC, VP9, ... parameter sets) fails the source at open, and a
mid-stream change to such a size at its first refused packet, with "frame size WxH exceeds
ingest.max_pixels=N". A size only decoding reveals (PNG, MJPEG) makes the decoder refuse
those pictures, which end the source like other undecodable media, the error naming the
limit. Every decoded frame's size is checked again before it is converted (a decoder that
does not apply FFmpeg's limit).

Timeouts: PyAV's interrupt callback aborts an open after ``open_timeout`` s and a single
read after ``read_timeout`` s. FFmpeg's RTSP demuxer retries once after an interrupted
read, so a silent RTSP server is reported after about twice ``read_timeout`` (measured
with FFmpeg 8 over TCP and UDP); the supervisor's stall watchdog is the backstop.

Hardware decode (``hwaccel``, as ``ingest.hwaccel``): :func:`resolve_decoder` turns the
setting into a device type or ``"software"``, probing each device once per process
(:func:`device_problem`). PyAV creates the device inside ``av.open`` and downloads every
decoded picture to system memory (``HWAccel(is_hw_owned=False)``), so frames are the same
uint8 RGB arrays as in software. Decoding falls back to software, never to an error: a device
that cannot be created (probe, or ``av.open``), a codec without a hardware config for the
device (PyAV then opens that stream in software), a profile the device rejects (FFmpeg's own
``allow_software_fallback``), and a hardware decode error after the first keyframe but
before the first frame (the container is reopened in software; no frame has left yet, so
none is lost). Later decode errors count as bad packets, as in software. Each stream
open logs the decoder in use at INFO.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
from fractions import Fraction
from typing import Callable, Iterator

import av
import av.error
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.video.stream import VideoStream

from ..config import HWAccelName, HWAccelSetting, IngestConfig
from ..errors import SourceError
from ..types import Frame

log = logging.getLogger(__name__)

# Consecutive packets that fail to decode before the stream counts as undecodable; a few
# bad packets (packet loss on UDP, a damaged GOP) are normal and only cost frames.
MAX_BAD_PACKETS = 50
_TIMEOUT_ERRORS = (av.error.ExitError, av.error.TimeoutError)

# The order "auto" tries device types in: NVDEC first (the GPU hosts), then the Linux,
# Intel, macOS and Windows APIs. Names are FFmpeg's (``av_hwdevice_get_type_name``).
HWACCEL_PREFERENCE: tuple[HWAccelName, ...] = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")
# Decoders the device probe looks in for a hardware config: what cameras and files carry.
_PROBE_CODECS = ("h264", "hevc", "av1", "vp9", "mpeg2video", "mjpeg")
_logged_once: set[str] = set()
DEFAULT_MAX_PIXELS: int = IngestConfig.model_fields["max_pixels"].default
_logged_once_lock = threading.Lock()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


def _timed_out(exc: BaseException, elapsed: float, limit: float | None) -> bool:
    # FFmpeg reports an interrupted RTSP handshake as "Invalid data", so judge by the clock too.
    return isinstance(exc, _TIMEOUT_ERRORS) or (limit is not None and elapsed >= 0.9 * limit)


def _log_once(key: str, level: int, msg: str, *args: object) -> None:
    with _logged_once_lock:
        if key in _logged_once:
            return
        _logged_once.add(key)
    log.log(level, msg, *args)


def choose_device(setting: str, usable: Callable[[str], bool]) -> str | None:
    """The hardware device type ``setting`` (an ``ingest.hwaccel`` value) picks, or None for software.

    ``"none"``: None. A device type: itself if ``usable(it)``, else None. ``"auto"``: the first
    of :data:`HWACCEL_PREFERENCE` that is ``usable``, else None. ``usable`` is asked in that
    order and no further than the first yes (asking may create a device).
    """
    if setting == "none":
        return None
    candidates: tuple[str, ...] = HWACCEL_PREFERENCE if setting == "auto" else (setting,)
    return next((device for device in candidates if usable(device)), None)


def _supports(codec: av.Codec, device: str) -> bool:
    """Whether FFmpeg's ``codec`` can decode on ``device`` through a device context (what PyAV uses)."""
    try:
        return any(c.is_supported and c.device_type.name == device for c in codec.hardware_configs)
    except ValueError:  # a device type newer than PyAV's HWDeviceType enum
        return False


@functools.cache
def device_problem(device: str) -> str | None:
    """Why this process cannot decode on ``device`` (an FFmpeg device type name); None if it can.

    Checks that the loaded FFmpeg was built with the type, that one of the usual decoders
    (h264, hevc, av1, vp9, mpeg2video, mjpeg) has a hardware config for it, and creates one
    device context (freed at once). Cached per process: a CUDA context costs tens of
    milliseconds to create, and a host's devices do not change under a running process.
    """
    built = hwdevices_available()
    if device not in built:
        return f"this FFmpeg was built without {device} (it has: {', '.join(built) or 'none'})"
    for name in _PROBE_CODECS:
        try:
            codec = av.Codec(name, "r")
        except ValueError:  # UnknownCodecError: not in this build
            continue
        if _supports(codec, device):
            break
    else:
        return f"none of this FFmpeg's {'/'.join(_PROBE_CODECS)} decoders can use {device}"
    try:
        HWAccel(device, allow_software_fallback=True).create(codec)
    except (av.error.FFmpegError, OSError, NotImplementedError) as exc:
        return f"cannot create a {device} device ({_reason(exc)})"
    return None


def _resolve(setting: HWAccelSetting) -> tuple[str, str | None]:
    """(decoder, why): a device type or ``"software"``, and why a named device was not used."""
    device = choose_device(setting, lambda d: device_problem(d) is None)
    if device is not None:
        return device, None
    if setting == "none":
        return "software", None
    if setting == "auto":
        # One short line at INFO; each device's reason (a long line) only at DEBUG (-v).
        _log_once("auto", logging.INFO, "ingest.hwaccel=auto: no usable hardware decoder (tried %s), "
                  "decoding in software", ", ".join(HWACCEL_PREFERENCE))
        if log.isEnabledFor(logging.DEBUG):
            tried = "; ".join(f"{d}: {device_problem(d)}" for d in HWACCEL_PREFERENCE)
            _log_once("auto-why", logging.DEBUG, "ingest.hwaccel=auto: %s", tried)
        return "software", None
    why = device_problem(setting)
    _log_once(setting, logging.WARNING, "ingest.hwaccel=%s: %s; decoding in software "
              "(ingest.hwaccel: none or auto silences this)", setting, why)
    return "software", why


def resolve_decoder(setting: HWAccelSetting) -> str:
    """The decoder ``ingest.hwaccel = setting`` gives on this host: a device type or ``"software"``.

    The first call per device type probes it (:func:`device_problem`); why a named device, or
    every device for ``"auto"``, is unusable is logged once per process (WARNING for a named
    device, INFO for ``"auto"``). A stream whose codec the device cannot decode still decodes
    in software; :func:`read_video` logs what each stream got.
    """
    return _resolve(setting)[0]


IoOpen = Callable[[str, int, dict[str, str]], io.IOBase]


def open_container(target: str, shown: str, options: dict[str, str], open_timeout: float | None,
                   read_timeout: float | None, hwaccel: HWAccel | None = None,
                   io_open: IoOpen | None = None) -> av.container.InputContainer:
    """``av.open`` for reading with timeouts; failures become SourceError naming ``shown``.

    With ``hwaccel`` video decoders get that device (PyAV creates it during the open). If that
    open fails other than by a timeout, the target is opened again in software and a WARNING
    names the hardware failure; only the software failure, if any, is raised. Whether a stream
    got the device: ``stream.codec_context.is_hwaccel``. ``io_open``: PyAV's custom I/O, through
    which FFmpeg then opens ``target`` and everything it refers to (a guarded source's policy).
    """
    started = time.monotonic()
    try:
        return av.open(target, mode="r", options=options, timeout=(open_timeout, read_timeout),
                       hwaccel=hwaccel, io_open=io_open)
    except (av.error.FFmpegError, OSError) as exc:
        elapsed = time.monotonic() - started
        if _timed_out(exc, elapsed, open_timeout):
            raise SourceError(f"{shown}: open timed out: no answer within {elapsed:.1f}s "
                              f"(ingest.open_timeout_s={open_timeout}; {_reason(exc)})") from exc
        if hwaccel is not None:
            # Device creation fails after the demuxer opened, so this may well be the device;
            # a software open tells: if it fails too, its error is the one that matters.
            container = open_container(target, shown, options, open_timeout, read_timeout, io_open=io_open)
            log.warning("%s: opening with hardware decode failed (%s); decoding in software",
                        shown, _reason(exc))
            return container
        raise SourceError(f"{shown}: cannot open ({_reason(exc)})") from exc


# Demuxers of streams that never end: a multipart JPEG camera feed, raw streams over a socket.
_ENDLESS_FORMATS = frozenset({"mpjpeg", "mjpeg", "h264", "hevc", "mpegts"})


def endless(container: av.container.InputContainer) -> bool:
    """Whether an opened container is a live feed rather than a video with an end: it has no
    duration (a live HLS playlist has none, a VOD one has its total) and its format is a feed's
    or HLS."""
    return container.duration is None and (container.format.name in _ENDLESS_FORMATS
                                           or "hls" in container.format.name.split(","))


def _first_video(container: av.container.InputContainer, shown: str, max_pixels: int) -> VideoStream:
    """The first video stream, its decoder limited to ``max_pixels``; SourceError when there
    is none or its stated picture size is larger."""
    if not container.streams.video:
        raise SourceError(f"{shown}: no video stream (streams: "
                          f"{', '.join(s.type for s in container.streams) or 'none'})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    check_frame_size(ctx.width, ctx.height, max_pixels, shown)  # 0x0 when only decoding tells
    # Read by avcodec_open2 at the first decode: larger pictures fail before allocation.
    ctx.options = {**ctx.options, "max_pixels": str(max_pixels)}
    return stream


def quarter_turns(rotation: float) -> int:
    """Counterclockwise quarter turns (0-3) for a display-matrix rotation in degrees
    (counterclockwise, as ``VideoFrame.rotation``: 90, -90, -180, ...), rounded to the nearest."""
    return int(round(rotation / 90.0)) % 4


def stream_rotation(stream: VideoStream) -> float:
    """The rotation an old FFmpeg/PyAV states as stream metadata (``rotate``: clockwise degrees),
    as counterclockwise degrees; 0 when absent. Used only where frames carry no
    ``VideoFrame.rotation`` (PyAV before 14)."""
    try:
        return -float(stream.metadata.get("rotate", 0))
    except ValueError:
        return 0.0


def upright_image(vf: av.VideoFrame, fallback: float = 0.0) -> np.ndarray:
    """``vf`` as uint8 RGB ``[H, W, 3]``, turned upright by its display matrix (none: as decoded).

    ``np.rot90(image, k)`` turns counterclockwise as displayed (rows down, columns right), the
    direction of ``VideoFrame.rotation``; the result is made contiguous (OpenCV needs it).
    ``fallback`` (counterclockwise degrees, :func:`stream_rotation`) is used by a PyAV whose
    frames have no ``rotation``.
    """
    image = vf.to_ndarray(format="rgb24")
    k = quarter_turns(getattr(vf, "rotation", fallback))
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def check_frame_size(width: int, height: int, max_pixels: int, shown: str) -> None:
    """SourceError when a ``width`` × ``height`` picture is over ``max_pixels``."""
    if width * height > max_pixels:
        raise SourceError(f"{shown}: frame size {width}x{height} exceeds ingest.max_pixels={max_pixels}")


def _decode_failure(exc: BaseException, max_pixels: int) -> str:
    """The reason a packet did not decode, with the size limit when that may be the cause
    (FFmpeg reports a refused picture size as an invalid argument or invalid data)."""
    hint = ""
    if isinstance(exc, (av.error.ArgumentError, av.error.InvalidDataError)):
        hint = f"; pictures over ingest.max_pixels={max_pixels} are refused"
    return _reason(exc) + hint


def _decoder_in_use(stream_id: str, stream: VideoStream, setting: HWAccelSetting, device: str,
                    why: str | None) -> str:
    """The decoder ``stream`` got (a device type or ``"software"``), logged at INFO with the reason
    when it is not the device asked for."""
    ctx = stream.codec_context
    decoder = device if device != "software" and ctx.is_hwaccel else "software"
    if decoder == "software" and device != "software":
        why = (f"opening with {device} failed" if _supports(ctx.codec, device)
               else f"FFmpeg's {ctx.codec.name} decoder cannot use {device}")
    note = f" (ingest.hwaccel={setting}: {why})" if why else ""
    where = "in software" if decoder == "software" else f"on {decoder}"
    log.info("%s: decoding %s %dx%d %s%s", stream_id, ctx.codec.name, ctx.width, ctx.height, where, note)
    return decoder


# A timestamp this many clock ticks off its frame's place k / rate is put there (see frame_time).
_SNAP_TICKS = Fraction(3, 2)


def frame_time(pts: int, time_base: Fraction | None, rate: Fraction | None) -> float:
    """A frame's time in seconds from its ``pts`` in ``time_base`` units, snapped onto the
    stream's frame grid ``k / rate`` when it lies within 1.5 ticks of it.

    Why: an RTP sender (GStreamer's payloaders, most cameras) converts each frame's time to
    the 90 kHz RTP clock by truncating, so a 12 fps frame due at 1/12 s arrives stamped
    7499/90000 s, one tick early, while the same frame read from the file has exactly 1/12 s.
    Snapping makes the same video give the same timestamps (hence the same sampling, windows
    and alert ``window`` times) whether it is read from a file or played over RTSP. A
    timestamp further off than that (a camera whose clock does not start on the grid, a
    variable frame rate) is kept as it is; the change is never more than the clock's own
    resolution allows. Without ``rate`` or ``time_base``: ``pts * time_base`` as FFmpeg has it.
    """
    if time_base is None:
        return float(pts)
    exact = pts * time_base
    if rate:
        tick = _SNAP_TICKS * time_base
        if tick < Fraction(1, 4) / rate:  # a clock fine enough to tell frames apart
            on_grid = round(exact * rate) / rate
            if abs(exact - on_grid) <= tick:
                return float(on_grid)
    return float(exact)


def read_video(stream_id: str, target: str, *, shown: str, options: dict[str, str] | None = None,
               open_timeout: float | None = None, read_timeout: float | None = None,
               stop: threading.Event | None = None, pace: bool | Callable[[], bool] = False,
               hwaccel: HWAccelSetting = "none", io_open: IoOpen | None = None,
               on_open: Callable[[av.container.InputContainer], None] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Frame]:
    """Frames of the first video stream of ``target`` (see the module docstring).

    ``hwaccel`` picks the decoder as ``ingest.hwaccel`` does (software by default); frames are
    uint8 RGB ``[H, W, 3]`` in system memory whichever decoder runs. ``io_open``: see
    :func:`open_container`. ``max_pixels`` is ``ingest.max_pixels``: no larger picture is decoded.
    """
    stop = stop or threading.Event()
    # Also the codec options of av.open's stream probing, which decodes a picture of some codecs.
    options = {**(options or {}), "max_pixels": str(max_pixels)}
    device, why = _resolve(hwaccel)
    container = open_container(target, shown, options, open_timeout, read_timeout,
                               None if device == "software" else HWAccel(device, allow_software_fallback=True),
                               io_open)
    try:
        stream = _first_video(container, shown, max_pixels)
        if on_open is not None:
            on_open(container)
        if callable(pace):
            pace = pace()
        decoder = _decoder_in_use(stream_id, stream, hwaccel, device, why)
        fallback_rotation = stream_rotation(stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        period = 1.0 / float(rate) if rate else 1.0 / 25.0
        index = 0
        last_pts: float | None = None
        clock_ref: tuple[float, float] | None = None  # (monotonic, pts) that pacing counts from
        bad_packets = 0
        last_failure: str | None = None  # why the latest packet that failed did not decode
        keyframe_seen = False
        packets = container.demux(stream)
        while not stop.is_set():
            read_started = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                elapsed = time.monotonic() - read_started
                if _timed_out(exc, elapsed, read_timeout):
                    raise SourceError(f"{shown}: read timed out: no data for {elapsed:.1f}s "
                                      f"(ingest.read_timeout_s={read_timeout}; {_reason(exc)})") from exc
                raise SourceError(f"{shown}: read failed after {index} frames ({_reason(exc)})") from exc
            keyframe_seen = keyframe_seen or packet.is_keyframe
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                # A decoder that refused a larger picture (a mid-stream size change) still
                # reports the size it was given, for codecs whose headers state it (H.264).
                check_frame_size(stream.codec_context.width, stream.codec_context.height, max_pixels, shown)
                if decoder != "software" and index == 0 and keyframe_seen:
                    # Errors before a keyframe are the stream's (a live join mid-GOP); from one
                    # on, with no frame out yet, the device cannot decode this stream (driver,
                    # profile, size). No frame has left, so a software reopen loses none.
                    log.warning("%s: %s decode failed before the first frame (%s); reopening in software",
                                stream_id, decoder, _reason(exc))
                    container.close()
                    container = open_container(target, shown, options, open_timeout, read_timeout,
                                               io_open=io_open)
                    stream = _first_video(container, shown, max_pixels)
                    decoder = _decoder_in_use(stream_id, stream, hwaccel, "software",
                                              f"{device} decode failed")
                    packets = container.demux(stream)
                    bad_packets = 0
                    keyframe_seen = False
                    continue
                bad_packets += 1
                last_failure = _decode_failure(exc, max_pixels)
                if bad_packets >= MAX_BAD_PACKETS:
                    hint = "" if decoder == "software" else \
                        f"; decoder {decoder}, ingest.hwaccel=none decodes in software"
                    raise SourceError(f"{shown}: undecodable video ({bad_packets} packets in a row failed; "
                                      f"last: {last_failure}{hint})") from exc
                continue
            bad_packets = 0
            for vf in decoded:
                pts = frame_time(vf.pts, vf.time_base or stream.time_base, rate) if vf.pts is not None else \
                    (0.0 if last_pts is None else last_pts + period)
                if pace:
                    now = time.monotonic()
                    if clock_ref is None or pts < clock_ref[1]:
                        clock_ref = (now, pts)
                    due = clock_ref[0] + (pts - clock_ref[1])
                    if now - due > 1.0:
                        clock_ref = (now, pts)  # fell far behind: rebase rather than burst the backlog
                    elif due > now and stop.wait(due - now):
                        return
                check_frame_size(vf.width, vf.height, max_pixels, shown)
                image = upright_image(vf, fallback_rotation)
                yield Frame(stream_id, index, float(pts), time.time(), image)
                last_pts = pts
                index += 1
                if stop.is_set():
                    return
        if index == 0 and not stop.is_set():
            why = f" (last decode error: {last_failure})" if last_failure else ""
            raise SourceError(f"{shown}: ended before any video frame could be decoded{why}")
    finally:
        container.close()
