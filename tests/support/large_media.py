"""Media with large or changing picture sizes, written at test time with little memory.

:func:`write_large_png` streams a PNG row by row (zlib from the standard library), so an
8192 × 8192 picture costs the test a few hundred kilobytes, not the 192 MiB it decodes to.
:func:`write_size_change` concatenates two raw H.264 (Annex B) clips of different sizes: a
stream whose picture grows mid-way, as a camera switching resolution sends it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from tests.support.media import write_video


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_large_png(path: Path, width: int, height: int) -> Path:
    """An 8-bit RGB PNG of ``width`` × ``height`` (horizontal grey stripes) at ``path``."""
    compressor = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y in range(height):
            row = b"\x00" + bytes([(y // 64 % 2) * 200]) * (3 * width)  # filter type 0, then the pixels
            data = compressor.compress(row)
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", compressor.flush()))
        f.write(_chunk(b"IEND", b""))
    return path


def _frames(width: int, height: int, count: int) -> list[np.ndarray]:
    return [np.full((height, width, 3), 40 + i % 200, np.uint8) for i in range(count)]


def write_size_change(path: Path, first: tuple[int, int], then: tuple[int, int], frames: int = 5,
                      lead: int = 150) -> Path:
    """Raw H.264 at ``path``: ``lead`` pictures of ``first`` (width, height), then ``frames`` of
    ``then``. The lead outlasts FFmpeg's stream probing (5 s; raw H.264 counts 25 fps), so the
    reader opens the stream at the first size and meets the second while decoding."""
    parts = [write_video(path.with_suffix(f".{i}.h264"), _frames(*size, count), fps=25)
             for i, (size, count) in enumerate(((first, lead), (then, frames)))]
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path
