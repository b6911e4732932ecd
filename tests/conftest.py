"""Fixtures shared by the whole suite: real servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
