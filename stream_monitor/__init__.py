"""stream-monitor: a real-time deepfake monitor for live video (the service; detectors live in ``models``)."""

__version__ = "0.1.0"
