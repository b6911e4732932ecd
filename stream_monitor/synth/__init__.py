"""``stream-monitor synth``: labelled pseudo-fake videos from real face videos.

* :mod:`.geometry` — face outline from five points, similarity fits, the followed face;
* :mod:`.blend` — self-blending (StA's video-level blending; per-frame as the contrast);
* :mod:`.swap` — CADDM's multi-scale facial swap with a donor video;
* :mod:`.media` — decoding and the one encoder every output goes through;
* :mod:`.build` — the pass over the videos, the FF++ layout and the manifest.

A test and adaptation aid, not a substitute for real deepfakes (see :mod:`.build`).
"""
