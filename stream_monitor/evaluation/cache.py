"""The evaluation's SQLite cache: detector results per video file, faces per image.

``scores``: one row per (video file, detector model). The video is keyed by its resolved
path, size and modification time (a re-encoded or replaced file is a new video); the
detector by its *model key* (:func:`stream_monitor.evaluation.run.model_key`: model name,
checkpoint digest and every setting that changes its numbers). A row holds the video's
score, its frame/window probabilities and its windows (for the fused score), written in
one transaction per video once all of the video's detectors are done, so a run killed at
any point leaves only complete videos and the next run skips them.

``faces``: face detections keyed by the exact pixels the face detector was given (a
BLAKE2b digest of the image bytes and shape), the call (full frame, or a region with its
smallest face size) and the face settings. Decoding is deterministic, so a later run —
another detector on the same videos — gets the same frames and finds their faces here
instead of running the face detector again.

WAL journal: a reader (a second process polling progress) never blocks the writer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..types import FaceObs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    video_path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    detector TEXT NOT NULL,
    model_key TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (video_path, size, mtime_ns, detector, model_key)
);
CREATE TABLE IF NOT EXISTS faces (
    key BLOB PRIMARY KEY,
    faces TEXT NOT NULL
);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, no fsync per commit
    conn.executescript(_SCHEMA)
    return conn


@dataclass(frozen=True)
class VideoKey:
    """A video file as the cache knows it."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "VideoKey":
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


class ScoreCache:
    """Detector results per (video, detector, model key); use from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path)

    def get(self, video: VideoKey, detector: str, model_key: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT result FROM scores WHERE video_path=? AND size=? AND mtime_ns=? AND detector=? AND model_key=?",
            (video.path, video.size, video.mtime_ns, detector, model_key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, video: VideoKey, results: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
        """Store ``{detector: (model_key, result)}`` of one video in one transaction."""
        now = time.time()
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(video.path, video.size, video.mtime_ns, d, key, json.dumps(result), now)
                 for d, (key, result) in results.items()])

    def close(self) -> None:
        self._conn.close()


def count_videos(path: Path) -> int:
    """Distinct videos with at least one stored result (progress polling; opens read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(conn.execute("SELECT COUNT(DISTINCT video_path) FROM scores").fetchone()[0])
    finally:
        conn.close()


def image_digest(image: np.ndarray) -> bytes:
    """BLAKE2b-128 of an image's shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.shape, str(image.dtype))).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.digest()


def _encode(faces: Sequence[FaceObs]) -> str:
    return json.dumps([[*map(float, f.box), *map(float, np.asarray(f.points).reshape(-1)), float(f.score)]
                       for f in faces])


def _decode(text: str) -> list[FaceObs]:
    out = []
    for v in json.loads(text):
        out.append(FaceObs((v[0], v[1], v[2], v[3]), np.asarray(v[4:14], dtype=np.float32).reshape(5, 2), v[14]))
    return out


class FaceStore:
    """Face lists by image key; safe from any thread (one lock around one connection)."""

    def __init__(self, path: Path, namespace: str) -> None:
        self._conn = _connect(Path(path))
        self._lock = threading.Lock()
        self._ns = namespace.encode()

    def key(self, digest: bytes, call: str) -> bytes:
        return hashlib.blake2b(self._ns + b"|" + call.encode() + b"|" + digest, digest_size=16).digest()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, list[FaceObs]]:
        if not keys:
            return {}
        with self._lock:
            found: dict[bytes, list[FaceObs]] = {}
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                for k, text in self._conn.execute(f"SELECT key, faces FROM faces WHERE key IN ({marks})", chunk):
                    found[bytes(k)] = _decode(text)
        return found

    def put_many(self, items: Iterable[tuple[bytes, Sequence[FaceObs]]]) -> None:
        rows = [(k, _encode(faces)) for k, faces in items]
        if rows:
            with self._lock, self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO faces VALUES (?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
