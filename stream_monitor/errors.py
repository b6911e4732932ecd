"""The service's few exception types; messages say what to do."""

from __future__ import annotations


class StreamMonitorError(Exception):
    """Base of the service's own errors."""


class SourceError(StreamMonitorError):
    """A video source cannot be opened or read (bad URL, dead server, timeout, bad media)."""


class WeightsError(StreamMonitorError):
    """Detector weights are missing or unusable; the message names the files and their source."""


class FaceBackendError(StreamMonitorError):
    """The configured face detector cannot be built (e.g. a missing SCRFD model file)."""


class SourceRefused(SourceError):
    """A source URL or path is not allowed by the configured policy (``api.source_hosts``,
    ``api.source_roots``, ...). The message names the setting and never whether a host
    answered or a file exists."""


class StreamExists(StreamMonitorError):
    """A stream with that id is already running (here, or in a fleet on another worker)."""


class UnknownStream(StreamMonitorError):
    """No stream with that id."""
