"""``stream-monitor finetune``: train a detector on labelled videos, through the live crops.

* :mod:`.data` — the dataset's videos split by identity into train and validation, and each
  video's face crops extracted through the live path (the engine's detection, tracking,
  sampling, alignment and windows; faces cached as ``eval`` caches them);
* :mod:`.caddm` — CADDM's objective (cross-entropy + 0.1 × the ADM's multi-box loss) and
  augmentations (alignment jitter, JPEG, colour and noise) after the authors;
* :mod:`.sta` — StA's trainable parameters (adapters and head), its cross-entropy and its
  per-clip augmentations;
* :mod:`.loop` — the loop: AdamW, AMP on CUDA, checkpoints that resume exactly, validation
  AUC, a progress bar, and the safetensors ``create_model`` and ``eval`` load.
"""
