"""Configuration: strict validation, env secrets, and the commented example kept in step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from stream_monitor.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config.example.yaml"


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, path + ".")
    return out


def _yaml_paths(node: Any, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(f"{prefix}{k}")
            out |= _yaml_paths(v, f"{prefix}{k}.")
    return out


def test_example_documents_every_field() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    missing = {p for p in _field_paths(Config) - _yaml_paths(data) if not p.startswith("streams")}
    assert not missing, f"fields missing from {EXAMPLE.name}: {sorted(missing)}"
    # Every key line carries a comment, or the line above it is one.
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_]+:", line) and "#" not in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"line {i + 1} has no comment: {line!r}"


def test_example_loads_and_matches_the_defaults() -> None:
    cfg = load_config(EXAMPLE, environ={})
    defaults = Config()
    assert cfg.model_dump(exclude={"streams"}) == defaults.model_dump(exclude={"streams"})
    assert [s.id for s in cfg.streams] == ["cam1"]


def test_unknown_and_bad_fields_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  treshold: 0.5\n")
    with pytest.raises(ConfigError, match=r"alerts\.treshold"):
        load_config(bad, environ={})
    bad.write_text("alerts:\n  threshold: 2\n")
    with pytest.raises(ConfigError, match=r"alerts\.threshold"):
        load_config(bad, environ={})
    bad.write_text("streams: [{id: a, url: x}, {id: a, url: y}]\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(bad, environ={})
    bad.write_text("faces:\n  backend: scrfd\n")
    with pytest.raises(ConfigError, match="scrfd_model"):
        load_config(bad, environ={})
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, environ={})
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_overrides_and_env_secrets(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("redis:\n  url: redis://file:1/0\n  prefix: x\napi:\n  token: from-file\n")
    cfg = load_config(f, overrides={"alerts": {"threshold": 0.1}},
                      environ={"STREAM_MONITOR_REDIS_URL": "redis://:secret@127.0.0.1:2/0",
                               "STREAM_MONITOR_API_TOKEN": "tok"})
    assert cfg.alerts.threshold == 0.1 and cfg.redis.prefix == "x"
    assert cfg.redis.url == "redis://:secret@127.0.0.1:2/0" and cfg.api.token == "tok"
