"""The deployment files: Dockerfile, deploy/compose.yaml, deploy/k8s (issue 5, items 3 and 4).

No Docker engine or Kubernetes cluster runs here, so:
- compose.yaml is validated by the Compose CLI (``docker compose``, else Debian's
  ``docker-compose`` v1: both validate client-side) once per profile (``--profile gpu``, the
  real-weights stack; ``--profile cpu``, the demo that runs anywhere: no GPU, no weights, a
  generated face video), then each resolved stack is checked, and the Alertmanager wiring
  (Prometheus' target, the route to the webhook, the entrypoint that puts the URL in) too;
- the Dockerfile is parsed and its instructions checked; its HEALTHCHECK command and the
  Kubernetes probes are run for real against a monitor on loopback;
- Kubernetes objects are validated against the JSON schemas bundled in ``kubernetes-validate``
  (CRDs structurally), then cross-checked (ports, labels, Secret keys, the ConfigMap's config
  through ``load_config``); the KEDA query is parsed by ``promtool``; ``kubectl kustomize``
  builds the whole set (and refuses to without the uncommitted ``secrets.env``); the weights
  Job's arguments are parsed by the real CLI;
- closed by default (issue 11): nothing secret is committed, Compose refuses to render
  without its three secrets, Redis runs with the ACL of deploy/redis (its start.sh and the
  healthcheck/readiness commands run for real in tests/security/test_deploy_defaults.py),
  and every config answers the Host names it is reached by and no others.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from stream_monitor.service import Service
from stream_monitor.config import Config, ConfigError, load_config
from stream_monitor.host_allowlist import HostAllowList
from stream_monitor.metrics import Metrics
from tests.support.servers import unavailable
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBE_VERSION = "1.30"
TOKEN = "probe-token"
# Stand-ins for the secrets an operator generates (token_urlsafe(32)-shaped; never used elsewhere).
SECRETS = {"STREAM_MONITOR_API_TOKEN": "t0k3n-Qx8vN2mLp4Rz7Kw9Yb1Hc5Jd6Fg3Se0Ua",
           "REDIS_PASSWORD": "r3d1s-Wm4Xq8Zn2Lv6Pb9Tc1Yd5Kh7Gf3Js0Ra",
           "GRAFANA_ADMIN_PASSWORD": "gr4f-Ab3Cd5Ef7Gh9Ij1Kl2Mn4Op6Qr8St0Uv"}
EVIL_HOST = "evil.example"


def answers(cfg: Config, listener: str, host: str) -> bool:
    """Whether the API ("api") or metrics ("metrics") listener of ``cfg`` answers ``Host: host``."""
    bind = cfg.api.host if listener == "api" else cfg.metrics.host
    return HostAllowList.for_listener(cfg.api.allowed_hosts, bind).allows(host)


# ---------------------------------------------------------------- Dockerfile parsing

def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_included(rules: list[str], path: str) -> bool:
    """Docker's .dockerignore semantics, enough for this file: the last matching rule wins, a
    rule matches a path or any of its parent directories, ``**`` spans directories."""

    def regex(pattern: str) -> re.Pattern[str]:
        p = str(PurePosixPath(pattern.strip("/")))
        out, i = "", 0
        while i < len(p):
            if p.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif p.startswith("**", i):
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for rule in rules:
        negate = rule.startswith("!")
        rx = regex(rule[1:] if negate else rule)
        if any(rx.fullmatch(c) for c in candidates):
            included = negate
    return included


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def _one(instructions: list[tuple[str, str]], name: str) -> str:
    found = [args for ins, args in instructions if ins == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def test_dockerfile_instructions(dockerfile: list[tuple[str, str]]) -> None:
    args = {m.group(1): m.group(2) for ins, a in dockerfile if ins == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    base = _one(dockerfile, "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu\d\d\.\d\d", base), base

    # Non-root: the last USER is a non-zero uid (or a name other than root), set before the entrypoint.
    order = [ins for ins, _ in dockerfile]
    users = [a for ins, a in dockerfile if ins == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), users
    assert max(i for i, ins in enumerate(order) if ins == "USER") < order.index("ENTRYPOINT")
    runs = " ".join(a for ins, a in dockerfile if ins == "RUN")
    if user.isdigit():
        assert re.search(rf"useradd\b.*--uid {user}\b", runs), "the USER uid is not created"

    # HEALTHCHECK on /healthcheck of the API port.
    health = _one(dockerfile, "HEALTHCHECK")
    assert "CMD" in health and "/healthcheck" in health and ":8080/" in health, health
    assert "8080" in _one(dockerfile, "EXPOSE").split()

    # serve is the entrypoint (exec form: the monitor is PID 1 and receives SIGTERM itself).
    assert exec_form(_one(dockerfile, "ENTRYPOINT")) == ["stream-monitor", "serve"]
    assert _one(dockerfile, "STOPSIGNAL") == "SIGTERM"
    cmd = exec_form(_one(dockerfile, "CMD"))
    assert cmd[cmd.index("--weights-dir") + 1] == "/weights"
    assert "/weights" in exec_form(_one(dockerfile, "VOLUME"))

    # The same --no-deps installs as scripts/bootstrap.sh.
    bootstrap = (ROOT / "scripts/bootstrap.sh").read_text(encoding="utf-8")
    pins = re.findall(r'"((?:facenet-pytorch|insightface)==[\d.]+)"', bootstrap)
    assert len(pins) == 2
    for pin in pins:
        assert re.search(rf'--no-deps[^&]*"{re.escape(pin)}"', runs), pin
    assert re.search(r"pip install \.", runs)


def test_dockerfile_context_and_baked_config(dockerfile: list[tuple[str, str]]) -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    for ins, a in dockerfile:
        if ins != "COPY" or a.startswith("--from"):
            continue
        *sources, _dest = a.split()
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY source {src} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            assert files, src
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert dockerignore_included(rules, rel), f"{rel} is copied but excluded by .dockerignore"
    # The package's own data files and pyproject's readme reach the build context.
    for rel in ["stream_monitor/api/static/index.html", "README.md", "pyproject.toml"]:
        if (ROOT / rel).exists():
            assert dockerignore_included(rules, rel), rel
    # Weights, the venv, git and artifacts never enter the build context.
    for rel in ["weights/README.md", "weights/caddm.safetensors", ".venv/bin/python", ".git/HEAD",
                "artifacts/x.mp4", "tests/conftest.py", "stream_monitor/__pycache__/cli.cpython-310.pyc"]:
        assert not dockerignore_included(rules, rel), rel

    # The baked config (COPY'd to the --config path) loads and listens where the image says.
    cmd = exec_form(_one(dockerfile, "CMD"))
    config_path = cmd[cmd.index("--config") + 1]
    copies = [a.split() for ins, a in dockerfile if ins == "COPY" and a.split()[-1] == config_path]
    assert len(copies) == 1, copies
    # Bound to 0.0.0.0, it refuses to start without a strong token (none, or a placeholder).
    for environ in ({}, {"STREAM_MONITOR_API_TOKEN": "change-me"}):
        with pytest.raises(ConfigError, match=r"not a loopback address.*secrets.token_urlsafe\(32\)"):
            load_config(ROOT / copies[0][0], environ=environ)
    cfg = load_config(ROOT / copies[0][0], environ={"STREAM_MONITOR_API_TOKEN": SECRETS["STREAM_MONITOR_API_TOKEN"]})
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == 8080
    assert str(cfg.detectors.weights_dir) == "/weights"
    assert cfg.metrics.port is None or str(cfg.metrics.port) in _one(dockerfile, "EXPOSE").split()
    # It answers the published port on the Docker host and the HEALTHCHECK, not a rebinding name.
    health = _one(dockerfile, "HEALTHCHECK")
    [health_host] = re.findall(r"http://([^/]+)/healthcheck", health)
    for host in ("localhost:8080", "127.0.0.1:8080", health_host):
        assert answers(cfg, "api", host), host
    assert not answers(cfg, "api", EVIL_HOST) and not answers(cfg, "api", "0.0.0.0:8080")


def test_dockerfile_parser_catches_problems() -> None:
    """The checks above are not vacuous: a root image without HEALTHCHECK fails them."""
    bad = parse_dockerfile("FROM ubuntu:22.04\n# USER monitor\nRUN pip install \\\n  .\nENTRYPOINT stream-monitor serve\n")
    assert [ins for ins, _ in bad] == ["FROM", "RUN", "ENTRYPOINT"]
    assert bad[1][0] == "RUN" and bad[1][1].split() == ["pip", "install", "."]
    with pytest.raises(AssertionError):
        _one(bad, "HEALTHCHECK")
    with pytest.raises(json.JSONDecodeError):
        exec_form(bad[2][1])
    assert not dockerignore_included(["**", "!models/", "**/__pycache__"], "models/__pycache__/a.pyc")
    assert dockerignore_included(["**", "!models/"], "models/sub/a.py")


# ---------------------------------------------------------------- compose

def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    unavailable("no Compose CLI: neither the `docker compose` plugin nor `docker-compose` "
                "(Debian package docker-compose, installed by scripts/bootstrap.sh test)")


PROFILES = ("gpu", "cpu")


def compose_config(cli: list[str], compose_file: Path, secrets: dict[str, str] | None = None,
                   profiles: tuple[str, ...] = PROFILES) -> subprocess.CompletedProcess[str]:
    """``compose --profile P ... config`` with exactly ``secrets`` (default: all of :data:`SECRETS`)
    in the environment: an empty --env-file, so a developer's deploy/.env cannot fill the gaps.
    (Compose v2 leaves the services of other profiles out of its output; v1 keeps them all
    with their ``profiles``: :func:`active` tells them apart either way.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in SECRETS}
    env.update(SECRETS if secrets is None else secrets)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.env"
        empty.write_text("")
        chosen = [arg for p in profiles for arg in ("--profile", p)]
        return subprocess.run([*cli, "--env-file", str(empty), "-f", str(compose_file), *chosen, "config"],
                              cwd=compose_file.parent, env=env, capture_output=True, text=True, timeout=60)


def active(resolved: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    """The services ``compose --profile PROFILE up`` starts: those without ``profiles`` and
    those that list PROFILE."""
    return {name: svc for name, svc in resolved["services"].items()
            if not svc.get("profiles") or profile in svc["profiles"]}


def _resolved(profile: str) -> dict[str, Any]:
    result = compose_config(compose_cli(), DEPLOY / "compose.yaml", profiles=(profile,))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    return {**resolved, "services": active(resolved, profile)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The resolved stack of the gpu profile (the real-weights deployment)."""
    return _resolved("gpu")


@pytest.fixture(scope="module")
def compose_cpu() -> dict[str, Any]:
    """The resolved stack of the cpu profile (no GPU, no weights, a generated sample video)."""
    return _resolved("cpu")


def test_compose_cli_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The validator is real: the same file with a misspelt key is refused."""
    cli = compose_cli()
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert "    stop_grace_period:" in text
    (tmp_path / "compose.yaml").write_text(text.replace("    stop_grace_period:", "    stop_grace_periods:"))
    result = compose_config(cli, tmp_path / "compose.yaml")
    assert result.returncode != 0 and "stop_grace_periods" in (result.stderr + result.stdout)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) from either the short or the long volume syntax."""
    out: dict[str, tuple[str, bool]] = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            source, target, mode = parts[0], parts[1], (parts[2] if len(parts) > 2 else "rw")
            out[target] = (source, "ro" in mode.split(","))
        else:
            out[v["target"]] = (v.get("source", ""), bool(v.get("read_only")))
    return out


def _published(port: str | dict[str, Any]) -> tuple[str, int, int]:
    """(host IP, published port, container port) of a resolved ``ports`` entry: the long form
    (Compose v2) or ``[IP:]PUBLISHED:TARGET[/proto]`` (v1); the host IP is "" when unset."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(port["published"]), int(port["target"])
    *ip, published, target = str(port).split("/")[0].split(":")
    return ":".join(ip), int(published), int(target)


def test_compose_stack(compose: dict[str, Any], dockerfile: list[tuple[str, str]]) -> None:
    services = compose["services"]
    assert {"stream-monitor", "redis", "prometheus", "grafana", "rtsp", "rtsp-publisher"} <= set(services)
    monitor = services["stream-monitor"]

    # Built from the repository's Dockerfile, run with the image's own command.
    assert Path(monitor["build"]["context"]).resolve() == ROOT
    assert (ROOT / monitor["build"].get("dockerfile", "Dockerfile")).is_file()
    assert monitor["command"] == exec_form(_one(dockerfile, "CMD"))

    # GPU reservation.
    devices = monitor["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    for d in devices:  # Compose v1's schema takes any string here; the engine wants "all" or a number
        assert d.get("count", "all") == "all" or int(d["count"]) >= 1, d

    # Weights read-only at /weights from the repository's weights/; the config file mounted.
    mounts = _mounts(monitor)
    source, ro = mounts["/weights"]
    assert ro and Path(source).resolve() == ROOT / "weights", mounts["/weights"]
    cmd = monitor["command"]
    config_target = cmd[cmd.index("--config") + 1]
    config_source, ro = mounts[config_target]
    assert ro and Path(config_source).is_file()

    # The monitor's config inside compose loads with the project's loader and matches the stack.
    env = {k: str(v) for k, v in monitor["environment"].items() if v}
    cfg = load_config(config_source, environ=env)
    # Redis as the ACL user of deploy/redis/users.acl, with the password Redis itself gets.
    assert cfg.redis.url == f"redis://stream-monitor:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert cfg.api.token == SECRETS["STREAM_MONITOR_API_TOKEN"]
    assert cfg.api.host == "0.0.0.0"
    ports = {_published(p)[2] for p in monitor["ports"]}
    assert cfg.api.port in ports
    assert str(cfg.detectors.weights_dir) == "/weights"
    # The stream comes from the compose RTSP server, fed by the publisher at the same path.
    [stream] = cfg.streams
    assert re.fullmatch(r"rtsp://rtsp:8554/\w+", stream.url), stream.url
    publisher = services["rtsp-publisher"]
    assert stream.url in " ".join(publisher["command"] if isinstance(publisher["command"], list)
                                   else [publisher["command"]])

    # Prometheus gets deploy/prometheus (prometheus.yml and its rule files) and scrapes the monitor.
    prom = services["prometheus"]
    prom_dir, ro = _mounts(prom)["/etc/prometheus"]
    assert ro and Path(prom_dir).resolve() == DEPLOY / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for job in scrape["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"stream-monitor:{cfg.metrics.port}" in targets or f"stream-monitor:{cfg.api.port}" in targets, targets
    assert cfg.metrics.port is None or cfg.metrics.host == "0.0.0.0"
    # Each listener answers the names it is reached by (Prometheus' targets, the published
    # port on localhost) and refuses a rebinding name.
    for target in targets:
        assert answers(cfg, "metrics" if target.endswith(f":{cfg.metrics.port}") else "api", target), target
    assert answers(cfg, "api", f"localhost:{cfg.api.port}") and answers(cfg, "api", f"127.0.0.1:{cfg.api.port}")
    for listener in ("api", "metrics"):
        assert not answers(cfg, listener, EVIL_HOST) and not answers(cfg, listener, "redis:6379")
    for rule_file in scrape.get("rule_files", []):
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file

    # Grafana gets provisioning and dashboards at the paths its provisioning files name.
    grafana = _mounts(services["grafana"])
    prov, ro = grafana["/etc/grafana/provisioning"]
    assert ro and Path(prov).resolve() == DEPLOY / "grafana/provisioning"
    for provider_file in (DEPLOY / "grafana/provisioning/dashboards").glob("*.y*ml"):
        for provider in yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]:
            source, ro = grafana[provider["options"]["path"]]
            assert ro and Path(source).resolve() == DEPLOY / "grafana/dashboards"
    for ds_file in (DEPLOY / "grafana/provisioning/datasources").glob("*.y*ml"):
        for ds in yaml.safe_load(ds_file.read_text(encoding="utf-8"))["datasources"]:
            if ds["type"] == "prometheus":
                assert ds["url"] == "http://prometheus:9090"

    # Redis is healthy before the monitor starts; SIGTERM with time to flush.
    assert monitor["depends_on"]["redis"]["condition"] == "service_healthy"
    assert monitor.get("stop_signal", "SIGTERM") == "SIGTERM"
    # A monitor that cannot start (no weights, no GPU) is retried a few times, not forever.
    assert _bounded_restart(monitor), monitor.get("restart")
    # The cpu profile's monitor is not part of this stack.
    assert "stream-monitor-cpu" not in services and "sample-video" not in services

    # Redis: started by deploy/redis/start.sh with users.acl (mounted read-only), not as root,
    # healthy only when the monitor's ACL user can PING.
    redis = services["redis"]
    acl_dir, ro = _mounts(redis)["/etc/redis-acl"]
    assert ro and Path(acl_dir).resolve() == DEPLOY / "redis"
    assert redis["command"][:2] == ["sh", "/etc/redis-acl/start.sh"] and "redis-server" not in redis["command"]
    assert str(redis["user"]).split(":")[0] not in ("0", "root")
    health = redis["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "--user stream-monitor" in health[1] and "REDISCLI_AUTH" in health[1]

    # Every published port listens on loopback only (the API also needs its token and Host).
    for name, service in services.items():
        for port in service.get("ports", []):
            assert _published(port)[0] == "127.0.0.1", (name, port)


def _bounded_restart(service: dict[str, Any]) -> bool:
    """``restart: on-failure:N`` (N >= 1): restarts after a crash, but not a crash loop."""
    m = re.fullmatch(r"on-failure:(\d+)", str(service.get("restart", "")))
    return m is not None and int(m.group(1)) >= 1


def _shell_command(service: dict[str, Any]) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else str(command)


def test_compose_cpu_profile(compose_cpu: dict[str, Any], compose: dict[str, Any], dockerfile: list[tuple[str, str]],
                             tmp_path: Path) -> None:
    """`--profile cpu` runs anywhere: no GPU reservation, no weights, a sample video with a
    face generated by the image itself, looped into the RTSP server the monitor reads."""
    services = compose_cpu["services"]
    assert {"stream-monitor-cpu", "sample-video", "redis", "rtsp", "rtsp-publisher", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    assert "stream-monitor" not in services
    # Nothing in the profile asks for a GPU.
    for name, service in services.items():
        assert "devices" not in service.get("deploy", {}).get("resources", {}).get("reservations", {}), name
    monitor = services["stream-monitor-cpu"]
    gpu_monitor = compose["services"]["stream-monitor"]
    assert monitor["image"] == gpu_monitor["image"] and Path(monitor["build"]["context"]).resolve() == ROOT
    assert "/weights" not in _mounts(monitor)
    assert _bounded_restart(monitor), monitor.get("restart")
    limits = monitor["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    # Prometheus' target name reaches it: the network alias of the gpu monitor's service name.
    assert "stream-monitor" in monitor["networks"]["default"]["aliases"]

    # Its config: deploy/demo-cpu.yaml's settings, CPU, random weights, the compose stream.
    cmd = monitor["command"]
    config_source, ro = _mounts(monitor)[cmd[cmd.index("--config") + 1]]
    assert ro
    env = {k: str(v) for k, v in monitor["environment"].items() if v}
    cfg = load_config(config_source, environ=env)
    demo = load_config(DEPLOY / "demo-cpu.yaml")
    assert cfg.detectors.device == "cpu" and cfg.detectors.random_weights
    assert cfg.detectors.enabled == demo.detectors.enabled
    assert cfg.detectors.caddm.model == demo.detectors.caddm.model and cfg.ingest.max_fps == demo.ingest.max_fps
    assert cfg.redis.url == f"redis://stream-monitor:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert cfg.api.token == SECRETS["STREAM_MONITOR_API_TOKEN"] and cfg.api.host == "0.0.0.0"
    assert answers(cfg, "metrics", f"stream-monitor:{cfg.metrics.port}") and not answers(cfg, "api", EVIL_HOST)
    [stream] = cfg.streams
    publisher = services["rtsp-publisher"]
    assert stream.url in _shell_command(publisher)

    # The sample: written once by the image's own module into the volume the publisher reads,
    # before the monitor starts.
    assert monitor["depends_on"]["sample-video"]["condition"] == "service_completed_successfully"
    sample = services["sample-video"]
    assert sample["image"] == monitor["image"] and sample.get("restart", "no") == "no"
    assert sample["entrypoint"] == ["python", "-m", "stream_monitor.ingest.sample_video"]
    out = PurePosixPath(sample["command"][0])
    [(volume, target)] = [(src, tgt) for tgt, (src, _) in _mounts(sample).items() if out.is_relative_to(tgt)]
    # A fresh named volume is root's unless the image's directory under it belongs to the user.
    assert volume in compose_cpu["volumes"], volume
    runs = " ".join(a for ins, a in dockerfile if ins == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(target)}\b", runs) and \
        re.search(rf"chown monitor:monitor {re.escape(target)}\b", runs), target
    [(pub_target, (_, pub_ro))] = [(tgt, m) for tgt, m in _mounts(publisher).items() if m[0] == volume]
    assert pub_ro and str(PurePosixPath(pub_target) / out.relative_to(target)) in _shell_command(publisher)
    # ... and the command really writes a video of the face (shortened here).
    from stream_monitor.ingest.sample_video import main as write_sample
    args = [str(tmp_path / out.name), *sample["command"][1:]]
    args[args.index("--seconds") + 1] = "0.4"
    assert write_sample(args) == 0
    import av
    with av.open(args[0]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (480, 640, 3)
    assert frames[0].std() > 10  # the photo, not a blank frame

    # Everything else is the same stack as the gpu profile.
    for name in ("redis", "rtsp", "rtsp-publisher", "prometheus", "alertmanager", "grafana"):
        assert services[name] == compose["services"][name], name


def test_compose_alertmanager_receives_the_rules(compose: dict[str, Any], tmp_path: Path) -> None:
    """Prometheus sends its alerts to the compose Alertmanager, whose route ends in a webhook
    at $ALERT_WEBHOOK_URL (put in place by the service's entrypoint)."""
    services = compose["services"]
    am = services["alertmanager"]
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for a in scrape["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    container_ports = {_published(p)[2] for p in am["ports"]}
    assert targets and all(t.split(":")[0] == "alertmanager" and int(t.split(":")[1]) in container_ports
                           for t in targets), targets
    assert all(_published(p)[0] == "127.0.0.1" for p in am["ports"])
    config_dir, ro = _mounts(am)["/etc/alertmanager"]
    assert ro and Path(config_dir).resolve() == DEPLOY / "alertmanager"

    # The entrypoint's rendering, run for real by sh (paths moved under tmp, alertmanager
    # itself replaced by a no-op): the URL from the environment lands in the webhook.
    assert am["entrypoint"] == ["/bin/sh", "-c"]
    script = _shell_command(am).replace("$$", "$")
    assert "/bin/alertmanager --config.file=/tmp/alertmanager.yml" in script
    script = (script.replace("/etc/alertmanager/", f"{DEPLOY / 'alertmanager'}/")
              .replace("/tmp/alertmanager.yml", str(tmp_path / "alertmanager.yml"))
              .replace("exec /bin/alertmanager", "true"))
    url = "https://hooks.example/stream-monitor?key=a&b=c|d%2F"  # sed specials & and |
    subprocess.run(["sh", "-c", script], env={"ALERT_WEBHOOK_URL": url, "PATH": os.environ["PATH"]}, check=True,
                   timeout=30)
    rendered = yaml.safe_load((tmp_path / "alertmanager.yml").read_text(encoding="utf-8"))
    assert str(am["environment"]["ALERT_WEBHOOK_URL"]).startswith("http")  # a default that parses

    # Every route (the root and its children) ends in a receiver that exists and has a webhook.
    receivers = {r["name"]: r for r in rendered["receivers"]}
    routes = [rendered["route"], *rendered["route"].get("routes", [])]
    for route in routes:
        receiver = receivers[route.get("receiver", rendered["route"]["receiver"])]
        assert [w["url"] for w in receiver["webhook_configs"]] == [url], receiver
    # Routes match on labels the rules set, and group by labels they carry.
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text(encoding="utf-8"))
    severities = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    for route in routes[1:]:
        for matcher in route["matchers"]:
            m = re.fullmatch(r'(\w+)="(\w+)"', matcher)
            assert m and m.group(1) == "severity" and m.group(2) in severities, matcher
    for inhibit in rendered.get("inhibit_rules", []):
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            assert re.fullmatch(r'severity="(\w+)"', matcher).group(1) in severities, matcher  # type: ignore[union-attr]


def test_compose_refuses_to_render_without_its_secrets() -> None:
    """No defaults for secrets: each of the three missing stops `compose config` (and `up`),
    naming the variable; an empty value is refused the same way (':?')."""
    cli = compose_cli()
    for name in SECRETS:
        for secrets in ({k: v for k, v in SECRETS.items() if k != name}, {**SECRETS, name: ""}):
            result = compose_config(cli, DEPLOY / "compose.yaml", secrets)
            assert result.returncode != 0 and f"set {name}" in result.stderr + result.stdout, (name, result.stderr)


# ---------------------------------------------------------------- Kubernetes

def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


CRD_REQUIRED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
    ("keda.sh/v1alpha1", "ScaledObject"): ["scaleTargetRef", "triggers"],
}


def test_k8s_schemas(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')")
    validated = set()
    for (kind, name), doc in k8s.items():
        crd = CRD_REQUIRED.get((doc["apiVersion"], kind))
        if crd is not None:  # no bundled schema for CRDs: structure only
            assert isinstance(doc["metadata"].get("labels", {}), dict)
            for field in crd:
                assert doc["spec"].get(field), f"{kind}/{name}: spec.{field} missing"
            continue
        kv.validate(doc, KUBE_VERSION, strict=True)  # strict: unknown fields are errors too
        validated.add(kind)
    # The Secret is generated by kustomize (test_kustomize_builds_only_with_secrets validates it).
    assert {"Deployment", "Service", "ConfigMap", "StatefulSet", "PersistentVolumeClaim",
            "HorizontalPodAutoscaler", "Job"} <= validated
    assert "Secret" not in validated

    # The schema check is real: a probe with a misspelt field, or a wrong type, is rejected.
    deployment = json.loads(json.dumps(k8s[("Deployment", "stream-monitor")]))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["paht"] = "/healthcheck"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)
    deployment = json.loads(json.dumps(k8s[("Deployment", "stream-monitor")]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "sixty"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION)


def test_kustomization_lists_the_core_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    core = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == core


def _container(k8s: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = k8s[("Deployment", "stream-monitor")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_k8s_weights_fetch_job(k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> None:
    """The Job fills the workers' weights volume with `stream-monitor weights fetch`: the same
    image and claim, mounted read-write only there, every enabled detector's fetchable files."""
    from typer.main import get_command

    from stream_monitor.cli import app
    from stream_monitor.weights_sources import fetchable_names, lookup

    job = k8s[("Job", "stream-monitor-weights-fetch")]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    worker_pod, worker = _container(k8s)
    assert container["image"] == worker["image"]
    assert pod["restartPolicy"] in ("OnFailure", "Never") and job["spec"]["backoffLimit"] >= 1
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    argv = container["command"] + container["args"]
    assert argv[:3] == ["stream-monitor", "weights", "fetch"]
    weights_dir = argv[argv.index("--weights-dir") + 1]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == weights_dir]
    assert not mount.get("readOnly")
    claim = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["persistentVolumeClaim"]
    worker_claims = [v["persistentVolumeClaim"]["claimName"] for v in worker_pod["volumes"]
                     if "persistentVolumeClaim" in v]
    assert claim["claimName"] in worker_claims and not claim.get("readOnly")
    modes = k8s[("PersistentVolumeClaim", claim["claimName"])]["spec"]["accessModes"]
    assert "ReadOnlyMany" in modes and ({"ReadWriteOnce", "ReadWriteMany"} & set(modes)), modes
    # The arguments parse as the real CLI's `weights fetch` (parsed, not run: it would download).
    weights_group = get_command(app).commands["weights"]  # type: ignore[attr-defined]
    fetch_command = weights_group.commands["fetch"]
    params = fetch_command.make_context("fetch", argv[3:]).params
    assert str(params["weights_dir"]) == weights_dir
    names = list(params["names"])
    assert names and all(n in fetchable_names() for n in names), names
    # Each detector the worker's ConfigMap enables gets its fetchable default file.
    args = worker["args"]
    config_path = PurePosixPath(args[args.index("--config") + 1])
    cfg_file = tmp_path / config_path.name
    cfg_file.write_text(k8s[("ConfigMap", "stream-monitor-config")]["data"][config_path.name], encoding="utf-8")
    cfg = load_config(cfg_file, environ=pod_env(worker, SECRETS))
    fetched = {lookup(n).model for n in names}  # type: ignore[union-attr]
    for detector in cfg.detectors.enabled:
        source = lookup(detector)
        if source is not None:
            assert source.model in fetched, detector
    # Non-commercial files are fetched only with the licence accepted explicitly.
    assert params["accept_licence"] == any(lookup(n).non_commercial for n in names)  # type: ignore[union-attr]


def test_k8s_worker_semantics(k8s: dict[tuple[str, str], dict[str, Any]], dockerfile: list[tuple[str, str]],
                              tmp_path: Path) -> None:
    deployment = k8s[("Deployment", "stream-monitor")]
    pod, container = _container(k8s)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # GPU requested (extended resources: requests == limits).
    res = container["resources"]
    assert int(res["limits"]["nvidia.com/gpu"]) >= 1
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]

    # The image's command, config from the ConfigMap at the --config path.
    args = container["args"]
    assert args == exec_form(_one(dockerfile, "CMD"))
    config_path = PurePosixPath(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [config_volume] = [n for n, v in volumes.items() if "configMap" in v]
    assert mounts[config_volume]["mountPath"] == str(config_path.parent)
    configmap = k8s[("ConfigMap", volumes[config_volume]["configMap"]["name"])]
    assert config_path.name in configmap["data"]

    # Weights: a read-only mount at the --weights-dir path, from the PVC defined here.
    weights_dir = args[args.index("--weights-dir") + 1]
    [weights] = [m for m in container["volumeMounts"] if m["mountPath"] == weights_dir]
    assert weights.get("readOnly") is True
    claim = volumes[weights["name"]]["persistentVolumeClaim"]
    assert claim.get("readOnly") is True and ("PersistentVolumeClaim", claim["claimName"]) in k8s

    # Secrets from the generated Secret's keys (secrets.env); the Redis URL is composed by the
    # kubelet from the password variable defined before it ($(VAR) expansion).
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_env) == {"REDIS_PASSWORD", "STREAM_MONITOR_API_TOKEN"}
    for name, ref in secret_env.items():
        assert ref == {"name": "stream-monitor-secrets", "key": name}, ref
    secret_values = pod_env(container, SECRETS)
    assert not any(k.startswith("STREAM_MONITOR") for k in configmap["data"][config_path.name].split())

    # The ConfigMap's config loads with the project's loader and agrees with the pod.
    cfg_file = tmp_path / config_path.name
    cfg_file.write_text(configmap["data"][config_path.name], encoding="utf-8")
    cfg = load_config(cfg_file, overrides={"detectors": {"weights_dir": weights_dir}}, environ=secret_values)
    # Replicas share streams through Redis: without the Secret's URL the config is refused.
    with pytest.raises(ConfigError, match="fleet.enabled needs redis.url"):
        load_config(cfg_file, environ={})
    # Bound to 0.0.0.0: without the Secret's token (or with a placeholder) it refuses to start.
    redis_only = {"STREAM_MONITOR_REDIS_URL": secret_values["STREAM_MONITOR_REDIS_URL"]}
    for token in ({}, {"STREAM_MONITOR_API_TOKEN": "change-me"}):
        with pytest.raises(ConfigError, match="not a loopback address"):
            load_config(cfg_file, environ={**redis_only, **token})
    token = {"STREAM_MONITOR_API_TOKEN": SECRETS["STREAM_MONITOR_API_TOKEN"]}
    plain = load_config(cfg_file, environ={**redis_only, **token})
    assert str(plain.detectors.weights_dir) == weights_dir
    assert cfg.fleet.enabled and cfg.fleet.capacity >= 1
    assert cfg.api.token == secret_values["STREAM_MONITOR_API_TOKEN"]
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == _port(container, "http")
    if cfg.metrics.port is not None:
        assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == _port(container, "metrics")

    # Redis URL: the ACL user with the Secret's password, at the Redis Service defined here.
    m = re.fullmatch(r"redis://stream-monitor:([\w-]+)@([\w.-]+):(\d+)/\d+", cfg.redis.url or "")
    assert m and m.group(1) == SECRETS["REDIS_PASSWORD"], cfg.redis.url
    redis_service = k8s[("Service", m.group(2))]
    assert int(m.group(3)) in [p["port"] for p in redis_service["spec"]["ports"]]
    redis_sts = k8s[("StatefulSet", "redis")]
    assert redis_service["spec"]["selector"].items() <= redis_sts["spec"]["template"]["metadata"]["labels"].items()

    # Host names: the Service's DNS names, and pod IPs (the kubelet's httpGet probes and
    # Prometheus' pod scrapes send Host: <pod IP>:<port>); never a rebinding name.
    service = k8s[("Service", "stream-monitor")]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for name in ("stream-monitor", "stream-monitor.default.svc", "stream-monitor.default.svc.cluster.local"):
        assert answers(cfg, "api", f"{name}:{ports['http']}") and answers(cfg, "metrics", f"{name}:{ports['metrics']}")
    for pod_ip in ("10.244.1.7", "172.17.0.5", "192.168.3.4", "[fd00:10:244::7]"):
        assert answers(cfg, "api", f"{pod_ip}:{cfg.api.port}")
        assert answers(cfg, "metrics", f"{pod_ip}:{cfg.metrics.port}")
    for host in (EVIL_HOST, "stream-monitor.evil.example", "8.8.8.8", "redis:6379"):
        assert not answers(cfg, "api", host) and not answers(cfg, "metrics", host), host

    # Probes: liveness/startup GET /healthcheck on the API port; readiness asks /readyz.
    for probe in ("livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthcheck" and _port(container, get["port"]) == cfg.api.port
    readiness = container["readinessProbe"]
    script = " ".join(readiness["exec"]["command"]) if "exec" in readiness else readiness["httpGet"]["path"]
    assert "/readyz" in script
    if "exec" in readiness:
        assert f"127.0.0.1:{cfg.api.port}/readyz" in script

    # Graceful termination: preStop delay + the monitor's stop grace (streams, then the outbox)
    # fit in terminationGracePeriodSeconds.
    pre_stop = container["lifecycle"]["preStop"]
    delay = int(pre_stop["exec"]["command"][-1]) if "exec" in pre_stop else int(pre_stop["sleep"]["seconds"])
    stop_grace = Config.model_fields["shutdown_grace_s"].default
    assert pod["terminationGracePeriodSeconds"] >= delay + 2 * stop_grace + 5

    # Non-root, as in the image.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0

    # The Service selects the pods and targets named container ports.
    service = k8s[("Service", "stream-monitor")]
    assert service["spec"]["selector"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        _port(container, port["targetPort"])


def test_k8s_monitoring_and_scaling(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = k8s[("Service", "stream-monitor")]
    service_monitor = k8s[("ServiceMonitor", "stream-monitor")]
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in service_monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint.get("path", "/metrics") == "/metrics"

    metric_names = {m.name for m in Metrics().registry.collect()}
    scaled = k8s[("ScaledObject", "stream-monitor-workers")]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "stream-monitor")
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "stream_monitor_streams_unassigned" in query
    for name in set(re.findall(r"stream_monitor_\w+", query)):  # every metric it uses is exported
        assert name in metric_names, name
    assert float(trigger["metadata"]["threshold"]) > 0

    hpa = k8s[("HorizontalPodAutoscaler", "stream-monitor-workers")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "stream-monitor"
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_keda_query_is_valid_promql(k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus, scripts/bootstrap.sh test)")
    query = k8s[("ScaledObject", "stream-monitor-workers")]["spec"]["triggers"][0]["metadata"]["query"]

    def check(expr: str) -> subprocess.CompletedProcess[str]:
        rules = tmp_path / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
            {"record": "stream_monitor:streams_wanted", "expr": expr}]}]}))
        return subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)

    result = check(query)
    assert result.returncode == 0, result.stdout + result.stderr
    assert check(query + " +").returncode != 0  # promtool does parse the expression


def pod_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``secretKeyRef`` values from
    ``secrets`` (by key), plain values with ``$(VAR)`` expanded from the variables before them."""
    env: dict[str, str] = {}
    for e in container["env"]:
        if "valueFrom" in e:
            env[e["name"]] = secrets[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    return env


def test_k8s_redis_runs_with_the_acl(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Redis starts through start.sh with users.acl from the redis-acl ConfigMap (the same
    bytes as deploy/redis), the password from the worker's Secret, readiness as the ACL user."""
    configmap = k8s[("ConfigMap", "redis-acl")]
    assert set(configmap["data"]) == {"users.acl", "start.sh"}
    for name, text in configmap["data"].items():
        assert text == (DEPLOY / "redis" / name).read_text(encoding="utf-8"), f"redis-acl.yaml {name} != deploy/redis"
    pod = k8s[("StatefulSet", "redis")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:2] == ["sh", "/etc/redis-acl/start.sh"] and "command" not in container
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/redis-acl"]
    assert mount.get("readOnly") is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "redis-acl"
    [password] = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "stream-monitor-secrets", "key": "REDIS_PASSWORD"}
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "--user stream-monitor" in probe and "REDISCLI_AUTH" in probe
    assert pod["securityContext"]["runAsNonRoot"] is True


def _kustomize() -> list[str]:
    for cli in (["kubectl", "kustomize"], ["kustomize", "build"]):
        exe = shutil.which(cli[0])
        if exe and subprocess.run([exe, *cli[1:], "--help"], capture_output=True).returncode == 0:
            return [exe, *cli[1:]]
    pytest.skip("neither `kubectl kustomize` nor `kustomize` is installed")


def test_kustomize_builds_only_with_secrets(tmp_path: Path) -> None:
    """`kubectl apply -k` needs secrets.env (not committed): without it the build fails naming
    it; with it, the generated Secret holds exactly those keys and every reference follows its
    hashed name."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    cli = _kustomize()
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work, ignore=shutil.ignore_patterns("secrets.env"))
    result = subprocess.run([*cli, str(work)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "secrets.env" in result.stderr, result.stderr
    keys = dict(line.split("=", 1) for line in (K8S / "secrets.env.example").read_text().splitlines()
                if line and not line.startswith("#"))
    assert set(keys) == {"STREAM_MONITOR_API_TOKEN", "REDIS_PASSWORD"} and not any(keys.values())
    (work / "secrets.env").write_text("".join(f"{k}={SECRETS[k]}\n" for k in keys))
    result = subprocess.run([*cli, str(work)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    [(_, secret_name)] = [k for k in objects if k[0] == "Secret"]
    assert secret_name.startswith("stream-monitor-secrets-")
    secret = objects[("Secret", secret_name)]
    kv.validate(secret, KUBE_VERSION, strict=True)
    import base64
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {k: SECRETS[k] for k in keys}

    def secret_refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["secretKeyRef"]["name"]] if "secretKeyRef" in node else []
            return own + [r for v in node.values() for r in secret_refs(v)]
        return [r for v in node for r in secret_refs(v)] if isinstance(node, list) else []

    refs = secret_refs(list(objects.values()))
    assert len(refs) == 3 and set(refs) == {secret_name}, refs  # worker: token + password; redis: password


def test_no_secret_values_are_committed() -> None:
    """Nothing under deploy/ carries a secret value or a default for one: no placeholder
    tokens, no Secret objects, no ${VAR:-default} for a password/token/secret, no redis://
    URL with a literal password; the generated files are git-ignored."""
    texts = {p: p.read_text(encoding="utf-8") for p in DEPLOY.rglob("*")
             if p.is_file() and p.suffix in (".yaml", ".yml", ".sh", ".acl", ".example", ".json", ".md", "")}
    texts[ROOT / "Dockerfile"] = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert DEPLOY / "compose.yaml" in texts and DEPLOY / "redis/users.acl" in texts
    placeholder = re.compile(r"change[-_ ]?me|changeit|hunter2|s3cret|\bpassword123\b", re.IGNORECASE)
    defaulted = re.compile(r"\$\{\w*(?:PASSWORD|TOKEN|SECRET|KEY)\w*:?-[^}]", re.IGNORECASE)  # a non-empty default
    literal_url = re.compile(r"rediss?://[^\s:@/]*:(?![$<])[^\s@]+@")  # $VAR, $(VAR), <placeholder> pass
    for path, text in texts.items():
        assert not placeholder.search(text), (path, placeholder.search(text))
        assert not defaulted.search(text), (path, defaulted.search(text))
        assert not literal_url.search(text), (path, literal_url.search(text))
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), f"{path} commits a Secret"
    # The checks are not vacuous.
    assert placeholder.search("STREAM_MONITOR_API_TOKEN: change-me") and defaulted.search("${REDIS_PASSWORD:-x}")
    assert defaulted.search("${GRAFANA_ADMIN_PASSWORD:-admin}") and not defaulted.search("${REDIS_PASSWORD:-}")
    assert literal_url.search("redis://u:pw@redis:6379/0") and not literal_url.search("redis://u:${P}@r:1/0")
    assert not literal_url.search("redis://stream-monitor:$(REDIS_PASSWORD)@redis:6379/0")
    assert not literal_url.search("rediss://user:<password>@host:6380/0")
    ignored = subprocess.run(["git", "check-ignore", "deploy/.env", "deploy/k8s/secrets.env"], cwd=ROOT,
                             capture_output=True, text=True)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.stdout.split() == ["deploy/.env", "deploy/k8s/secrets.env"], ignored


# ---------------------------------------------------------------- probes run for real

def _probe_argv(command: list[str], port: int) -> list[str]:
    assert command[0] == "python"
    return [sys.executable, *[c.replace(":8080/", f":{port}/") for c in command[1:]]]


async def _run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


def test_probes_against_a_real_monitor(k8s: dict[tuple[str, str], dict[str, Any]],
                                       dockerfile: list[tuple[str, str]]) -> None:
    """The Dockerfile's HEALTHCHECK and the pod's probes, run against the real API on loopback
    with a token set (as in the Secret): each passes when it should and fails when it should."""
    import aiohttp

    health = _one(dockerfile, "HEALTHCHECK")
    health_cmd = exec_form(health[health.index("CMD") + 3:].strip())
    _, container = _container(k8s)
    readiness_cmd = container["readinessProbe"]["exec"]["command"]
    liveness_path = container["livenessProbe"]["httpGet"]["path"]

    configmap = yaml.safe_load(k8s[("ConfigMap", "stream-monitor-config")]["data"]["config.yaml"])
    allowed_hosts = configmap["api"]["allowed_hosts"]

    async def main() -> None:
        overrides = small_config(detectors={"enabled": ["caddm"]},
                                 api={"port": 0, "token": TOKEN, "allowed_hosts": allowed_hosts},
                                 metrics={"port": 0}, alerts={"stdout": False})
        monitor = Service(load_config(overrides=overrides, environ={}))
        await monitor.start()
        base_env = {k: v for k, v in os.environ.items() if k != "STREAM_MONITOR_API_TOKEN"}
        with_token = {**base_env, "STREAM_MONITOR_API_TOKEN": TOKEN}
        try:
            port = monitor.api_port or 0
            assert await _run(_probe_argv(health_cmd, port), base_env) == 0
            assert await _run(_probe_argv(readiness_cmd, port), with_token) == 0
            # Without (or with a wrong) token /readyz is 401: the probe must fail, not pass.
            assert await _run(_probe_argv(readiness_cmd, port), base_env) == 1
            assert await _run(_probe_argv(readiness_cmd, port), {**base_env, "STREAM_MONITOR_API_TOKEN": "x"}) == 1
            # A monitor that is not ready (503 with reasons) fails readiness, stays live.
            monitor.ready = False
            assert await _run(_probe_argv(readiness_cmd, port), with_token) == 1
            assert await _run(_probe_argv(health_cmd, port), base_env) == 0
            monitor.ready = True
            # The kubelet's httpGet probes and Prometheus send no token, and Host: <pod IP>:<port>
            # (a pod IP stands in; the connection itself goes to loopback), which the ConfigMap's
            # allowed_hosts accept; a rebinding name is refused on both listeners.
            pod_ip = "10.244.1.7"
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}{liveness_path}") as r:
                    assert r.status == 200
                async with s.get(f"http://127.0.0.1:{port}{liveness_path}", headers={"Host": f"{pod_ip}:8080"}) as r:
                    assert r.status == 200
                for host in (f"{pod_ip}:9108", "stream-monitor:9108", None):
                    headers = {"Host": host} if host else {}
                    async with s.get(f"http://127.0.0.1:{monitor.metrics_port}/metrics", headers=headers) as r:
                        assert r.status == 200 and "stream_monitor_stream_up" in await r.text(), host
                for listener in (port, monitor.metrics_port):
                    async with s.get(f"http://127.0.0.1:{listener}/healthcheck", headers={"Host": EVIL_HOST}) as r:
                        assert r.status == 421
        finally:
            await monitor.stop(grace=2.0)
        # Nothing listening: both fail.
        assert await _run(_probe_argv(health_cmd, port), base_env) != 0
        assert await _run(_probe_argv(readiness_cmd, port), with_token) != 0

    asyncio.run(main())
