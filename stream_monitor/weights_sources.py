"""The checkpoint files ``stream-monitor weights fetch`` can download, and from where.

Each entry is a file its authors publish on Google Drive, with the Drive file id taken from
the link in their README (read at the commits listed in /work/shared/DETECTORS.md):

- CADDM (megvii-research/CADDM b3f7619, README "Pretrained weights"): one Drive file,
  ``1JNMI4RGssgCOl9t05jkUa6imnw5XR5id``, for the release of the three backbones. Whether it
  is an archive holding ``efficientnet-b4.pkl``, ``efficientnet-b3.pkl`` and ``resnet34.pkl``
  or a single checkpoint is not recorded anywhere public [unverified]; the fetcher accepts
  both (an archive's members are picked by file name, a single checkpoint by the layout it
  fits).
- StA (YZY-stack/StA4Deepfake 1a00b32, README "Pretrained Weights"): ``sta_best.pth``,
  CC BY-NC 4.0 (the README's badge).
- pSp (eladrich/pixel2style2pixel README, "Pretrained Models", StyleGAN Inversion):
  ``psp_ffhq_encode.pt``. The pSp code is MIT, but the file also holds a StyleGAN2 FFHQ
  generator converted from NVIDIA's release, whose terms are non-commercial; it is treated
  as a non-commercial file.

StyleFlow's StyleGRU and content weights are not public (on request from their authors),
so they have no entry. No entry has a published size or sha256: the first fetch records
both in the local manifest (:mod:`stream_monitor.weights_manifest`) and later fetches are
held to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import DEFAULT_MODELS


@dataclass(frozen=True)
class FetchSource:
    """One fetchable checkpoint.

    ``model`` is the registered model name the file is checked against; ``filename`` the
    authors' file name, which is also where it is stored in the weights directory (the
    name :func:`stream_monitor.weights.resolve` looks for). ``drive_id`` names the Google
    Drive file; several entries may share one (an archive or a release of several files).
    ``non_commercial`` entries need ``--accept-licence``. ``max_bytes`` bounds what is
    accepted from the network; ``size``/``sha256`` are the published values, when known.
    """

    model: str
    detector: str
    filename: str
    drive_id: str
    page: str
    licence: str
    non_commercial: bool
    max_bytes: int = 4 << 30
    size: int | None = None
    sha256: str | None = None

    @property
    def drive_url(self) -> str:
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


_CADDM_ID = "1JNMI4RGssgCOl9t05jkUa6imnw5XR5id"
_CADDM_PAGE = "https://github.com/megvii-research/CADDM#pretrained-weights"
_CADDM_LICENCE = ("Apache-2.0 (megvii-research/CADDM LICENSE; the weights carry no separate licence): "
                  "https://www.apache.org/licenses/LICENSE-2.0")

SOURCES: tuple[FetchSource, ...] = (
    FetchSource("caddm_efficientnet_b4", "caddm", "efficientnet-b4.pkl", _CADDM_ID, _CADDM_PAGE, _CADDM_LICENCE,
                non_commercial=False),
    FetchSource("caddm_efficientnet_b3", "caddm", "efficientnet-b3.pkl", _CADDM_ID, _CADDM_PAGE, _CADDM_LICENCE,
                non_commercial=False),
    FetchSource("caddm_resnet34", "caddm", "resnet34.pkl", _CADDM_ID, _CADDM_PAGE, _CADDM_LICENCE,
                non_commercial=False),
    FetchSource("sta_clip_vitl14", "sta", "sta_best.pth", "1WdmyPWKSR1kFE5dIsQvbb0MOGBUqUyjN",
                "https://github.com/YZY-stack/StA4Deepfake#2-download-ckpts-for-inference",
                "CC BY-NC 4.0, non-commercial use only (StA4Deepfake README badge): "
                "https://creativecommons.org/licenses/by-nc/4.0/", non_commercial=True),
    FetchSource("styleflow_psp_encoder", "styleflow", "psp_ffhq_encode.pt", "1bMTNWkh5LArlaWSc_wa8VKyq2V42T2z0",
                "https://github.com/eladrich/pixel2style2pixel#pretrained-models",
                "pSp code MIT; the file also holds a StyleGAN2 FFHQ generator converted from NVIDIA's release, "
                "under NVIDIA's non-commercial terms (treated as non-commercial; the monitor loads only the encoder)",
                non_commercial=True),
)

_BY_MODEL = {s.model: s for s in SOURCES}


def fetchable_names() -> list[str]:
    """Every accepted NAME: the model names, plus a detector name where its default model is fetchable."""
    aliases = [d for d, m in DEFAULT_MODELS.items() if m in _BY_MODEL]
    return [s.model for s in SOURCES] + aliases


def lookup(name: str) -> FetchSource | None:
    """The source for a model name or a detector alias (``caddm`` → its default model); ``None`` if not fetchable."""
    return _BY_MODEL.get(DEFAULT_MODELS.get(name, name))


def siblings(source: FetchSource) -> list[FetchSource]:
    """The entries published in the same Drive file as ``source``, itself first."""
    return [source] + [s for s in SOURCES if s.drive_id == source.drive_id and s is not source]
