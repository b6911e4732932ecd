"""``stream-monitor weights fetch NAME...``: download the authors' public checkpoints, check them, record them.

For each NAME (a model from :mod:`stream_monitor.weights_sources`, or a detector whose
default model is fetchable):

1. licence: every licence is shown; a non-commercial one needs ``accept_licence``, else
   :class:`LicenceRefused` before anything touches the network;
2. already installed (``<model>.safetensors`` or the authors' file in the weights dir): the
   file must match its manifest record, if any, and pass the check below; nothing is
   downloaded (so the command is also "make sure this model is usable");
3. otherwise the Drive file is downloaded into ``<weights_dir>/drive-<id>.part``
   (resumable: :mod:`stream_monitor.drive_download`), held to the manifest's size and
   sha256 when it has a record, and checked by :func:`stream_monitor.weights.check_file`,
   the safe read and strict layout check that ``import`` and ``verify`` use. An archive
   (a zip that is not itself a torch checkpoint) gives the members named like the wanted
   files, matched by base name only and never written under the archive's own paths;
   a single checkpoint is stored as the file of whichever model it fits (the requested
   one first, then the others published in the same Drive file);
4. a file that passes is renamed to its authors' file name (mode 0644) and recorded in the
   manifest (first fetch) — a file that fails is deleted and nothing is recorded.

Exit codes through the CLI: :class:`~stream_monitor.errors.WeightsError` (unknown name,
licence, refusal, unsafe or ill-fitting file, manifest mismatch) is 2;
:class:`~stream_monitor.drive_download.DownloadError` (network) is 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from .drive_download import DriveClient
from .errors import WeightsError
from .weights_manifest import Manifest, check_recorded
from .weights_sources import FetchSource, fetchable_names, lookup, siblings


class LicenceRefused(WeightsError):
    """A non-commercial file was requested without ``--accept-licence``."""


@dataclass(frozen=True)
class Fetched:
    """One model's checkpoint now in the weights dir: ``state`` is ``"downloaded"`` or ``"present"``."""

    model: str
    path: Path
    state: str
    size: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, candidates: list[str]) -> str:
    from .weights import check_file  # torch and the models load only when a file is checked

    return check_file(path, candidates)


def sources_for(names: list[str]) -> list[FetchSource]:
    """The sources for ``names`` in order, once each; an unknown name is a :class:`WeightsError`."""
    out: list[FetchSource] = []
    for name in names:
        source = lookup(name)
        if source is None:
            hint = (" (StyleFlow's StyleGRU and content weights are not public; fetch styleflow_psp_encoder "
                    "for its pSp part)" if name.startswith("styleflow") else "")
            raise WeightsError(f"cannot fetch {name!r}{hint}; fetchable: {', '.join(fetchable_names())}")
        if source not in out:
            out.append(source)
    return out


def licence_gate(sources: list[FetchSource], accept_licence: bool) -> None:
    refused = [s for s in sources if s.non_commercial and not accept_licence]
    if refused:
        raise LicenceRefused("; ".join(f"{s.model} is licensed for non-commercial use only ({s.licence})"
                                       for s in refused) + "; re-run with --accept-licence to accept")


def _installed(source: FetchSource, weights_dir: Path, manifest: Manifest) -> Fetched | None:
    """The model's file if one is already in the weights dir (checked), in ``resolve``'s order."""
    for path in (weights_dir / f"{source.model}.safetensors", weights_dir / source.filename):
        if not path.is_file():
            continue
        digest = _sha256(path)
        changed = check_recorded(path, manifest, digest)
        if changed:
            raise WeightsError(changed)
        try:
            _check(path, [source.model])
        except WeightsError as exc:
            raise WeightsError(f"{path} is present but not usable ({exc}); move it away to fetch a fresh copy") \
                from None
        return Fetched(source.model, path, "present", path.stat().st_size, digest)
    return None


def _is_archive(path: Path) -> bool:
    """A zip that is not itself a torch checkpoint (torch's zip format has a ``*/data.pkl`` record)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _extract(archive: Path, source: FetchSource, dst: Path) -> None:
    """Copy the one member whose base name is ``source.filename`` to ``dst``, within ``max_bytes``."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [i for i in z.infolist() if not i.is_dir() and PurePosixPath(i.filename).name == source.filename]
            if len(members) != 1:
                raise WeightsError(f"the archive from Drive file {source.drive_id} holds "
                                   f"{'no' if not members else len(members)} members named {source.filename}")
            if members[0].file_size > source.max_bytes:
                raise WeightsError(f"{source.filename} in the archive is {members[0].file_size} bytes, more than "
                                   f"the {source.max_bytes} accepted; refused")
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with z.open(members[0]) as src, os.fdopen(fd, "wb") as out:
                # ZipExtFile stops at the declared size and checks the CRC, so a lying header cannot
                # make this write more than the bound checked above.
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
        dst.unlink(missing_ok=True)
        raise WeightsError(f"cannot extract {source.filename} from the archive of Drive file {source.drive_id}: "
                           f"{exc}") from None
    except WeightsError:
        dst.unlink(missing_ok=True)
        raise


def _store(path: Path, target: Path) -> None:
    os.chmod(path, 0o644)
    os.replace(path, target)


class Fetcher:
    """One ``weights fetch`` run over a weights directory; ``say`` gets the progress lines."""

    def __init__(self, weights_dir: Path, client: DriveClient | None = None, *, offline: bool = False,
                 say: Callable[[str], None] = print) -> None:
        self.weights_dir = weights_dir
        self.client = client
        self.offline = offline
        self.say = say
        self.manifest = Manifest.load(weights_dir)

    def fetch(self, sources: list[FetchSource]) -> list[Fetched]:
        out: list[Fetched] = []
        groups: dict[str, list[FetchSource]] = {}
        for s in sources:
            groups.setdefault(s.drive_id, []).append(s)
        for group in groups.values():
            pending = []
            for s in group:
                found = _installed(s, self.weights_dir, self.manifest)
                if found is None:
                    pending.append(s)
                else:
                    out.append(found)
            if pending:
                if self.offline:
                    raise WeightsError(f"{', '.join(s.model for s in pending)}: not in {self.weights_dir}, and "
                                       "--offline forbids downloading")
                out.extend(self._download(pending))
        return out

    def _download(self, pending: list[FetchSource]) -> list[Fetched]:
        first = pending[0]
        client = self.client or DriveClient()
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        part = self.weights_dir / f"drive-{first.drive_id}.part"
        record = self.manifest.download(first.drive_id)
        have = part.stat().st_size if part.is_file() else 0
        self.say(f"downloading {first.drive_url} ({first.page}) into {part}"
                 + (f", resuming at byte {have}" if have else ""))
        got = client.download(first.drive_id, part, max_bytes=max(s.max_bytes for s in pending),
                              expected_size=record.size if record else first.size,
                              label=", ".join(s.filename for s in pending))
        digest = _sha256(part)
        expected = record.sha256 if record else first.sha256
        if expected is not None and digest != expected:
            part.unlink()
            raise WeightsError(f"Drive file {first.drive_id} has sha256 {digest}, not the {expected} recorded in "
                               f"{self.manifest.path if record else 'the source table'}: refused and deleted "
                               "(a different release, or not the authors' file)")
        try:
            placed = (self._place_archive(part, pending) if _is_archive(part)
                      else self._place_single(part, pending, got.size, digest))
        finally:
            part.unlink(missing_ok=True)
        self.manifest.record_download(first.drive_id, got.size, digest)
        for f in placed:
            self.manifest.record_file(f.path.name, f.model, f.size, f.sha256, first.drive_id)
        self.manifest.save()
        missing = [s.model for s in pending if s.model not in {f.model for f in placed}]
        if missing:
            kept = ", ".join(f"{f.model} ({f.path.name})" for f in placed)
            raise WeightsError(f"{', '.join(missing)}: not in Drive file {first.drive_id}, which holds one "
                               f"checkpoint: {kept}, kept and recorded")
        return placed

    def _place_archive(self, archive: Path, pending: list[FetchSource]) -> list[Fetched]:
        out = []
        for s in pending:
            tmp = self.weights_dir / f"{s.filename}.part"
            _extract(archive, s, tmp)
            try:
                _check(tmp, [s.model])
            except WeightsError as exc:
                tmp.unlink(missing_ok=True)
                raise WeightsError(f"{s.filename} from Drive file {s.drive_id} was refused and deleted: {exc}") \
                    from None
            target = self.weights_dir / s.filename
            _store(tmp, target)
            out.append(Fetched(s.model, target, "downloaded", target.stat().st_size, _sha256(target)))
        return out

    def _place_single(self, part: Path, pending: list[FetchSource], size: int, digest: str) -> list[Fetched]:
        # The requested models first, then the others published in the same Drive file whose
        # file is not already here: a single checkpoint is kept as whichever model it fits.
        others = [s for s in siblings(pending[0]) if s not in pending and not (self.weights_dir / s.filename).exists()]
        candidates = pending + others
        try:
            model = _check(part, [s.model for s in candidates])
        except WeightsError as exc:
            raise WeightsError(f"the file downloaded from Drive file {pending[0].drive_id} was refused and "
                               f"deleted: {exc}") from None
        source = next(s for s in candidates if s.model == model)
        target = self.weights_dir / source.filename
        _store(part, target)
        return [Fetched(model, target, "downloaded", size, digest)]


def fetch(names: list[str], weights_dir: Path, *, accept_licence: bool = False, offline: bool = False,
          client: DriveClient | None = None, say: Callable[[str], None] = print) -> list[Fetched]:
    """Make each NAME's checkpoint present and checked in ``weights_dir`` (module docstring)."""
    sources = sources_for(names)
    licence_gate(sources, accept_licence)
    for s in sources:
        accepted = " (non-commercial: accepted with --accept-licence)" if s.non_commercial else ""
        say(f"{s.model}: {s.filename} from {s.page}; licence: {s.licence}{accepted}")
    return Fetcher(weights_dir, client, offline=offline, say=say).fetch(sources)
