"""Dataset layouts -> labelled local video files.

Every layout yields :class:`Sample` s: an existing local file, its path relative to the
dataset root (the ``video`` key of ``scores.jsonl``), a label (0 real, 1 fake) and a group
(manipulation method, sub-dataset, or ``None``). Layouts:

``ffpp`` — FaceForensics++ as its download script writes it::

    ROOT/original_sequences/youtube/<c23|c40|raw>/videos/000.mp4          label 0, group "original"
    ROOT/manipulated_sequences/<Method>/<c23|c40|raw>/videos/000_003.mp4  label 1, group <Method>
    ROOT/original_sequences/actors/<...>/videos/*.mp4                     label 0, group "actors"

  ``compression`` picks the level (default ``c23``). ``methods`` picks manipulation folders
  (default: every one present except ``DeepFakeDetection``, whose reals are the ``actors``
  folder, added only when that method is asked for). ``split_file``: the FF++ split JSON
  (``test.json``: a list of ``[target, source]`` id pairs) keeps the youtube reals and the
  ``a_b`` fakes of those pairs.

``celebdf`` — Celeb-DF v2: ``ROOT/List_of_testing_videos.txt``, lines ``<1|0> <relpath>``
  where **1 means real** (the file's convention); group = the top folder (``Celeb-real``,
  ``YouTube-real``, ``Celeb-synthesis``).

``dfdc`` — DFDC: ``ROOT/metadata.json`` (``{"x.mp4": {"label": "FAKE"|"REAL", ...}}``) or
  several part folders each holding one (``dfdc_train_part_*``); group ``None``. The public
  test set's ``labels.csv`` is the ``csv`` layout.

``deepfakebench`` — a DeepfakeBench dataset JSON
  (``{dataset: {label_name: {split: {[compression:] {video: {"label", "frames": [...]}}}}}}``).
  Labels whose name contains ``real`` are 0 (``FF-real``, ``CelebDFv2_real``, ``DFDC_Real``,
  ...), every other is 1; group = the label name. Those JSONs list extracted frames; the
  video is found next to them: ``<dir>/frames/<name>/`` -> ``<dir>/videos/<name>.<ext>`` or
  ``<dir>/<name>.<ext>``, tried under ``root`` (default: the JSON's folder) with the frame
  path as written and with leading folders stripped (the paths name the authors' disks).

``csv`` — ``path,label[,group]`` lines; an optional header line; labels ``0``/``1`` or
  ``real``/``fake`` (any case); paths relative to the CSV's folder or absolute. DFDC's
  ``labels.csv`` (``filename,label``) reads as is.

Only local files are accepted: an entry naming a URL (``scheme://``, ``synthetic:``) is
refused, so a dataset file can never make the evaluation open a network source.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from ..errors import StreamMonitorError

LAYOUTS = ("ffpp", "celebdf", "dfdc", "deepfakebench", "csv")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_DFD = "DeepFakeDetection"
_URLISH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # scheme: (file:, http:, synthetic:, ...)


class DatasetError(StreamMonitorError):
    """The dataset cannot be read as the layout says; the message names the file and entry."""


@dataclass(frozen=True)
class Sample:
    """One labelled video: ``path`` absolute, ``video`` relative to the dataset root (POSIX)."""

    path: Path
    video: str
    label: int
    group: str | None


@dataclass(frozen=True)
class Dataset:
    layout: str
    root: Path
    samples: tuple[Sample, ...]

    def counts(self) -> dict[str, int]:
        """Number of real and fake videos."""
        fake = sum(s.label for s in self.samples)
        return {"real": len(self.samples) - fake, "fake": fake}


def detect_layout(path: Path) -> str:
    """The layout of ``path`` (a folder or a file), or :class:`DatasetError` naming what was looked for."""
    if path.is_file():
        if path.name == "List_of_testing_videos.txt":
            return "celebdf"
        if path.name == "metadata.json":
            return "dfdc"
        if path.suffix.lower() == ".csv":
            return "csv"
        if path.suffix.lower() == ".json":
            return "deepfakebench"
    elif path.is_dir():
        if (path / "original_sequences").is_dir() or (path / "manipulated_sequences").is_dir():
            return "ffpp"
        if (path / "List_of_testing_videos.txt").is_file():
            return "celebdf"
        if (path / "metadata.json").is_file() or any(path.glob("*/metadata.json")):
            return "dfdc"
    else:
        raise DatasetError(f"{path}: no such file or folder")
    raise DatasetError(f"{path}: not a known dataset layout (a FaceForensics++ folder with original_sequences/ or "
                       "manipulated_sequences/, a Celeb-DF folder with List_of_testing_videos.txt, a DFDC folder "
                       "with metadata.json, a DeepfakeBench .json, or a path,label[,group] .csv); "
                       "or name it with --layout")


def load_dataset(path: Path, layout: str = "auto", compression: str = "c23", methods: Iterable[str] | None = None,
                 split: str = "test", root: Path | None = None, split_file: Path | None = None) -> Dataset:
    """Read the dataset at ``path``; see the module docstring for each layout's options.

    Raises :class:`DatasetError` (an empty dataset too). Samples are sorted by ``video``.
    """
    path = Path(path)
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r} (use auto or one of {', '.join(LAYOUTS)})")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if split_file is not None and layout != "ffpp":
        raise DatasetError(f"--split-file is for the ffpp layout, not {layout}")
    if root is not None and layout != "deepfakebench":
        raise DatasetError(f"--root is for the deepfakebench layout, not {layout}")
    if layout == "ffpp":
        base, samples = path, _ffpp(path, compression, list(methods) if methods else None, split_file)
    elif layout == "celebdf":
        base = path.parent if path.is_file() else path
        samples = _celebdf(base, path if path.is_file() else path / "List_of_testing_videos.txt")
    elif layout == "dfdc":
        base = path.parent if path.is_file() else path
        samples = _dfdc(base, [path] if path.is_file() else _dfdc_metadata(path))
    elif layout == "deepfakebench":
        if not path.is_file():
            raise DatasetError(f"{path}: the deepfakebench layout reads a dataset .json file")
        base = Path(root) if root is not None else path.parent
        samples = _deepfakebench(path, base, split, compression)
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: the csv layout reads a path,label[,group] .csv file")
        base, samples = path.parent, _csv(path)
    unique = _dedupe(samples)
    if not unique:
        raise DatasetError(f"{path}: no videos found ({layout} layout)")
    return Dataset(layout, base.resolve(), tuple(sorted(unique, key=lambda s: s.video)))


def _dedupe(samples: list[Sample]) -> list[Sample]:
    seen: dict[Path, Sample] = {}
    for s in samples:
        prior = seen.get(s.path)
        if prior is not None and prior.label != s.label:
            raise DatasetError(f"{s.video}: listed both as real and as fake")
        seen.setdefault(s.path, s)
    return list(seen.values())


def _sample(base: Path, rel: str, label: int, group: str | None, where: str) -> Sample:
    """A sample for ``rel`` (relative to ``base`` or absolute); refuses URLs and missing files."""
    text = rel.strip()
    if not text or _URLISH.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        raise DatasetError(f"{where}: {text!r} is not a local file path (URLs are not read)")
    p = Path(text)
    full = p if p.is_absolute() else base / p
    if not full.is_file():
        raise DatasetError(f"{where}: {full}: no such video file")
    video = text if p.is_absolute() else PurePosixPath(*p.parts).as_posix()
    return Sample(full.resolve(), video, label, group)


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _ffpp(root: Path, compression: str, methods: list[str] | None, split_file: Path | None) -> list[Sample]:
    manipulated = root / "manipulated_sequences"
    present = sorted(d.name for d in manipulated.iterdir() if d.is_dir()) if manipulated.is_dir() else []
    chosen = methods if methods is not None else [m for m in present if m != _DFD]
    unknown = [m for m in chosen if m not in present]
    if unknown:
        raise DatasetError(f"{manipulated}: no method folder {', '.join(unknown)} (present: "
                           f"{', '.join(present) or 'none'})")
    pairs = _ff_split(split_file) if split_file is not None else None
    folders: list[tuple[Path, int, str]] = [(root / "original_sequences" / "youtube" / compression / "videos", 0,
                                             "original")]
    if _DFD in chosen:
        folders.append((root / "original_sequences" / "actors" / compression / "videos", 0, "actors"))
    folders += [(manipulated / m / compression / "videos", 1, m) for m in chosen]
    samples: list[Sample] = []
    for folder, label, group in folders:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing (is the compression level {compression!r} downloaded? "
                               "--compression c23|c40|raw)")
        for video in _videos_in(folder):
            if pairs is not None and group not in ("actors", _DFD) and not _in_split(video.stem, label, pairs):
                continue
            samples.append(Sample(video.resolve(), video.relative_to(root).as_posix(), label, group))
    return samples


def _ff_split(split_file: Path) -> set[tuple[str, str]]:
    try:
        data = json.loads(Path(split_file).read_text(encoding="utf-8"))
        pairs = {(str(a), str(b)) for a, b in data}
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{split_file}: not an FF++ split file (a JSON list of [target, source] pairs): "
                           f"{exc}") from None
    return pairs


def _in_split(stem: str, label: int, pairs: set[tuple[str, str]]) -> bool:
    if label == 0:
        return any(stem in pair for pair in pairs)
    a, _, b = stem.partition("_")
    return (a, b) in pairs or (b, a) in pairs


def _celebdf(root: Path, listing: Path) -> list[Sample]:
    samples = []
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{listing}: cannot read: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        flag, _, rel = line.strip().partition(" ")
        if flag not in ("0", "1") or not rel.strip():
            raise DatasetError(f"{listing}:{n}: expected '<1|0> <path>' (1 = real), got {line!r}")
        group = PurePosixPath(rel.strip()).parts[0] if "/" in rel else None
        samples.append(_sample(root, rel, 0 if flag == "1" else 1, group, f"{listing}:{n}"))
    return samples


def _dfdc_metadata(root: Path) -> list[Path]:
    own = root / "metadata.json"
    return [own] if own.is_file() else sorted(root.glob("*/metadata.json"))


def _json_object(path: Path, expected: str) -> dict[str, Any]:
    """The JSON object in ``path``; DatasetError naming the file (and ``expected``) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected {expected}")
    return data


def _dfdc(root: Path, files: list[Path]) -> list[Sample]:
    samples = []
    for meta in files:
        data = _json_object(meta, "an object of file name -> {\"label\": ...}")
        for name, info in data.items():
            label = str(info.get("label", "")).upper() if isinstance(info, dict) else ""
            if label not in ("REAL", "FAKE"):
                raise DatasetError(f"{meta}: {name}: label must be REAL or FAKE")
            rel = (meta.parent / name).relative_to(root).as_posix()
            samples.append(_sample(root, rel, int(label == "FAKE"), None, str(meta)))
    return samples


def _label_of(text: str, where: str) -> int:
    t = text.strip().lower()
    if t in ("0", "real"):
        return 0
    if t in ("1", "fake"):
        return 1
    raise DatasetError(f"{where}: label must be 0/1 or real/fake, got {text!r}")


def _csv(path: Path) -> list[Sample]:
    base = path.parent
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    samples = []
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or len(row) > 3:
            raise DatasetError(f"{path}:{n}: expected path,label[,group], got {len(row)} fields")
        if n == 1 and row[1].strip().lower() not in ("0", "1", "real", "fake"):
            continue  # a header line
        group = (row[2].strip() or None) if len(row) == 3 else None
        samples.append(_sample(base, row[0], _label_of(row[1], f"{path}:{n}"), group, f"{path}:{n}"))
    return samples


def _deepfakebench(path: Path, root: Path, split: str, compression: str) -> list[Sample]:
    data = _json_object(path, "{dataset: {label: {split: ...}}}")
    finder = _VideoFinder(root)
    samples: list[Sample] = []
    for dataset_name, labels in data.items():
        if not isinstance(labels, dict):
            raise DatasetError(f"{path}: {dataset_name}: expected an object of label names")
        for label_name, splits in labels.items():
            videos = splits.get(split) if isinstance(splits, dict) else None
            if videos is None:
                continue
            if isinstance(videos, dict) and videos and not any(isinstance(v, dict) and "frames" in v
                                                               for v in videos.values()):
                videos = videos.get(compression, {})  # FF++: split -> compression level -> videos
            label = 0 if "real" in label_name.lower() else 1
            for name, info in (videos or {}).items():
                frames = info.get("frames") if isinstance(info, dict) else None
                if not frames or not isinstance(frames, list):
                    raise DatasetError(f"{path}: {dataset_name}/{label_name}/{split}/{name}: no frames list")
                video = finder.find(str(frames[0]), f"{path}: {label_name}/{name}")
                samples.append(Sample(video.resolve(), _relative(video, root), label, label_name))
    return samples


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


class _VideoFinder:
    """Maps a DeepfakeBench frame path to its video under ``root`` (see the module docstring).
    Remembers how many leading folders had to be stripped: every entry of one JSON shares it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._strip: int | None = None

    def find(self, frame: str, where: str) -> Path:
        if _URLISH.match(frame) and not re.match(r"^[A-Za-z]:[\\/]", frame):
            raise DatasetError(f"{where}: {frame!r} is not a local file path (URLs are not read)")
        parts = PurePosixPath(frame.replace("\\", "/")).parts
        parts = tuple(p for p in parts if p not in ("/", ""))
        video_dir = parts[:-1]  # .../frames/<name>
        if not video_dir:
            raise DatasetError(f"{where}: frame path {frame!r} has no video folder")
        name = video_dir[-1]
        if len(video_dir) >= 2 and video_dir[-2] == "frames":
            stems = [video_dir[:-2] + ("videos", name), video_dir[:-2] + (name,)]
        else:
            stems = [video_dir[:-1] + (name,)]
        order = [self._strip] if self._strip is not None else []
        order += [k for k in range(len(video_dir)) if k != self._strip]
        for k in order:
            for stem in stems:
                for suffix in VIDEO_SUFFIXES:
                    candidate = self.root.joinpath(*stem[k:-1], stem[-1] + suffix) if len(stem) > k else None
                    if candidate is not None and candidate.is_file():
                        self._strip = k
                        return candidate
        raise DatasetError(f"{where}: no video for frames {'/'.join(video_dir)} under {self.root} (looked for "
                           f"{'/'.join(stems[0])}.mp4 and similar; pass --root)")
