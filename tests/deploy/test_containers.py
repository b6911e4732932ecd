"""The deployment files: Dockerfile, deploy/compose.yaml, deploy/k8s (issue 5, items 3 and 4).

No Docker engine or Kubernetes cluster runs here, so:
- compose.yaml is validated by the Compose CLI (``docker compose``, else Debian's
  ``docker-compose`` v1: both validate client-side), then its resolved form is checked;
- the Dockerfile is parsed and its instructions checked; its HEALTHCHECK command and the
  Kubernetes probes are run for real against a monitor on loopback;
- Kubernetes objects are validated against the JSON schemas bundled in ``kubernetes-validate``
  (CRDs structurally), then cross-checked (ports, labels, Secret keys, the ConfigMap's config
  through ``load_config``); the KEDA query is parsed by ``promtool``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from stream_monitor.app import Monitor
from stream_monitor.config import ConfigError, load_config
from stream_monitor.metrics import Metrics
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBE_VERSION = "1.30"
TOKEN = "probe-token"


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
    cfg = load_config(ROOT / copies[0][0], environ={})
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == 8080
    assert str(cfg.detectors.weights_dir) == "/weights"
    assert cfg.metrics.port is None or str(cfg.metrics.port) in _one(dockerfile, "EXPOSE").split()


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
    pytest.skip("no Compose CLI: neither the `docker compose` plugin nor `docker-compose` "
                "(Debian package docker-compose, installed by scripts/bootstrap.sh test)")


def compose_config(cli: list[str], compose_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.pop("STREAM_MONITOR_API_TOKEN", None)
    return subprocess.run([*cli, "-f", str(compose_file), "config"], cwd=compose_file.parent, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    cli = compose_cli()
    result = compose_config(cli, DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    return resolved


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
    assert cfg.redis.url == "redis://redis:6379/0"
    assert cfg.api.host == "0.0.0.0"
    ports = {int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[1]) for p in monitor["ports"]}
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
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert monitor.get("stop_signal", "SIGTERM") == "SIGTERM"


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
    assert {"Deployment", "Service", "ConfigMap", "Secret", "StatefulSet", "PersistentVolumeClaim",
            "HorizontalPodAutoscaler"} <= validated

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

    # Secrets from the Secret's keys.
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_env) == {"STREAM_MONITOR_REDIS_URL", "STREAM_MONITOR_API_TOKEN"}
    secret_values: dict[str, str] = {}
    for name, ref in secret_env.items():
        secret = k8s[("Secret", ref["name"])]
        secret_values[name] = secret["stringData"][ref["key"]]
    assert not any(k.startswith("STREAM_MONITOR") for k in configmap["data"][config_path.name].split())

    # The ConfigMap's config loads with the project's loader and agrees with the pod.
    cfg_file = tmp_path / config_path.name
    cfg_file.write_text(configmap["data"][config_path.name], encoding="utf-8")
    cfg = load_config(cfg_file, overrides={"detectors": {"weights_dir": weights_dir}}, environ=secret_values)
    # Replicas share streams through Redis: without the Secret's URL the config is refused.
    with pytest.raises(ConfigError, match="fleet.enabled needs redis.url"):
        load_config(cfg_file, environ={})
    plain = load_config(cfg_file, environ={"STREAM_MONITOR_REDIS_URL": secret_values["STREAM_MONITOR_REDIS_URL"]})
    assert str(plain.detectors.weights_dir) == weights_dir
    assert cfg.fleet.enabled and cfg.fleet.capacity >= 1
    assert cfg.api.token == secret_values["STREAM_MONITOR_API_TOKEN"]
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == _port(container, "http")
    if cfg.metrics.port is not None:
        assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == _port(container, "metrics")

    # Redis URL points at the Redis Service defined here.
    m = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", cfg.redis.url or "")
    assert m, cfg.redis.url
    redis_service = k8s[("Service", m.group(1))]
    assert int(m.group(2)) in [p["port"] for p in redis_service["spec"]["ports"]]
    redis_sts = k8s[("StatefulSet", "redis")]
    assert redis_service["spec"]["selector"].items() <= redis_sts["spec"]["template"]["metadata"]["labels"].items()

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
    stop_grace = inspect.signature(Monitor.stop).parameters["grace"].default
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
        pytest.skip("promtool is not installed (Debian package prometheus, scripts/bootstrap.sh test)")
    query = k8s[("ScaledObject", "stream-monitor-workers")]["spec"]["triggers"][0]["metadata"]["query"]

    def check(expr: str) -> subprocess.CompletedProcess[str]:
        rules = tmp_path / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
            {"record": "stream_monitor:streams_wanted", "expr": expr}]}]}))
        return subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)

    result = check(query)
    assert result.returncode == 0, result.stdout + result.stderr
    assert check(query + " +").returncode != 0  # promtool does parse the expression


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

    async def main() -> None:
        overrides = small_config(detectors={"enabled": ["caddm"]}, api={"port": 0, "token": TOKEN},
                                 metrics={"port": 0}, alerts={"stdout": False})
        monitor = Monitor(load_config(overrides=overrides, environ={}))
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
            # The kubelet's httpGet probes and Prometheus send no token.
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}{liveness_path}") as r:
                    assert r.status == 200
                async with s.get(f"http://127.0.0.1:{monitor.metrics_port}/metrics") as r:
                    assert r.status == 200 and "stream_monitor_stream_up" in await r.text()
        finally:
            await monitor.stop(grace=2.0)
        # Nothing listening: both fail.
        assert await _run(_probe_argv(health_cmd, port), base_env) != 0
        assert await _run(_probe_argv(readiness_cmd, port), with_token) != 0

    asyncio.run(main())
