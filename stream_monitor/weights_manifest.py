"""``<weights_dir>/manifest.json``: size and sha256 of what ``weights fetch`` downloaded.

No fetchable file has a published sha256, so trust is established on first use: the first
complete download of a Drive file records its size and sha256 under ``downloads``, and each
checkpoint file it yielded (the download itself, or a member of an archive) under
``files``. Later downloads of the same Drive file must match the record, and a checkpoint
file named in ``files`` must still hash to its record (``weights fetch`` and ``weights
verify`` check). Deleting an entry accepts a new release on the next fetch.

Format (version 1)::

    {"version": 1,
     "downloads": {"<drive id>": {"size": N, "sha256": "...", "recorded": "<UTC ISO time>"}},
     "files": {"<file name>": {"model": "...", "size": N, "sha256": "...", "drive_id": "..."}}}

The file is written atomically (a temporary file renamed over it), mode 0644.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Record:
    size: int
    sha256: str


def _record(entry: Any, where: str) -> Record:
    if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) \
            or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
        raise WeightsError(f"{where}: needs an integer size and a 64-digit sha256")
    return Record(entry["size"], entry["sha256"].lower())


@dataclass
class Manifest:
    """The manifest of one weights directory (empty when the file does not exist)."""

    path: Path
    downloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, weights_dir: Path) -> "Manifest":
        """Read it; a malformed manifest is a :class:`WeightsError` naming the file."""
        path = weights_dir / MANIFEST_NAME
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{path}: unreadable manifest ({exc}); fix or delete it") from None
        if not isinstance(data, dict) or data.get("version") != 1 \
                or not isinstance(data.get("downloads", {}), dict) or not isinstance(data.get("files", {}), dict):
            raise WeightsError(f"{path}: not a version-1 manifest; fix or delete it")
        manifest = cls(path, dict(data.get("downloads", {})), dict(data.get("files", {})))
        for key, entry in manifest.downloads.items():
            _record(entry, f"{path}: downloads.{key}")
        for key, entry in manifest.files.items():
            _record(entry, f"{path}: files.{key}")
        return manifest

    def download(self, drive_id: str) -> Record | None:
        entry = self.downloads.get(drive_id)
        return None if entry is None else _record(entry, f"{self.path}: downloads.{drive_id}")

    def file(self, filename: str) -> Record | None:
        entry = self.files.get(filename)
        return None if entry is None else _record(entry, f"{self.path}: files.{filename}")

    def record_download(self, drive_id: str, size: int, sha256: str) -> None:
        self.downloads[drive_id] = {"size": size, "sha256": sha256,
                                    "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def record_file(self, filename: str, model: str, size: int, sha256: str, drive_id: str) -> None:
        self.files[filename] = {"model": model, "size": size, "sha256": sha256, "drive_id": drive_id}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "downloads": self.downloads, "files": self.files}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def check_recorded(path: Path, manifest: Manifest, sha256: str) -> str | None:
    """A message when ``path`` is in the manifest and ``sha256`` (its hash) differs from the record, else ``None``."""
    record = manifest.file(path.name)
    if record is None or record.sha256 == sha256:
        return None
    return (f"{path}: sha256 {sha256} differs from the {record.sha256} recorded when it was fetched "
            f"({manifest.path}); the file changed: delete it and fetch it again")
