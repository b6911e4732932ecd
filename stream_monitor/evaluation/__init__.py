"""``stream-monitor eval``: detection quality on labelled videos, through the live code path.

* :mod:`.datasets` — dataset layouts (FaceForensics++, Celeb-DF v2, DFDC, DeepfakeBench
  JSON, plain CSV) to a list of labelled local video files;
* :mod:`.metrics` — frame- and video-level AUC, EER, AP, accuracy, TPR/FPR at a threshold,
  with scikit-learn, as DeepfakeBench and the authors compute them;
* :mod:`.cache` — the SQLite score cache (per video file and detector model) and the
  content-addressed face cache, so an interrupted run resumes and a later detector reuses
  the faces;
* :mod:`.scoring` — one video through :func:`stream_monitor.predict.predict_video` with
  each window's probability kept, and the live fusion replayed over the windows;
* :mod:`.report` — ``scores.jsonl``, ``metrics.json``, ``report.md``, ``roc.png``, ``hist.png``;
* :mod:`.run` — the loop: cache look-up, models for what is missing, progress bar, report.
"""
