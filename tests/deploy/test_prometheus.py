"""Dashboards and alerting rules as code, checked against the real thing.

- Every metric named in the Grafana dashboards and the Prometheus rules exists in
  ``stream_monitor/metrics.py`` (static).
- ``promtool check rules`` / ``promtool test rules`` pass on ``deploy/prometheus``.
- A real Prometheus (Debian's) on loopback scrapes a running Monitor (small random-weight
  detectors, synthetic streams, threshold 0 so alerts happen, a real Redis); every panel,
  variable and annotation query of every dashboard, sent as Grafana would (range queries,
  ``$stream``/``$__rate_interval``/``$__interval``/``$__range`` substituted), returns data, and
  the rules load and evaluate without errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from stream_monitor.service import Service
from stream_monitor.config import load_config
from stream_monitor.metrics import Metrics
from tests.support.servers import RedisServer, free_port, stop_process, unavailable, wait_until
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
PROM_DIR = ROOT / "deploy/prometheus"
DATASOURCE_UID = "stream-monitor-prometheus"
METRIC_RE = re.compile(r"\bstream_monitor_[a-zA-Z0-9_]+")
RATE_INTERVAL, INTERVAL = "10s", "5s"  # what Grafana would pick for a 1 s scrape interval, rounded up


# ---------------------------------------------------------------- queries as Grafana has them

def _dashboard_queries(path: Path) -> list[tuple[str, str, str]]:
    """(kind, where, expr) for every panel target, variable and annotation of one dashboard."""
    d = json.loads(path.read_text())
    out: list[tuple[str, str, str]] = []
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            out.append(("panel", f"{path.name}: {panel['title']} [{t['refId']}]", t["expr"]))
    for var in d.get("templating", {}).get("list", []):
        if var["type"] == "datasource":  # the ${DS_PROMETHEUS} picker: a plugin id, not PromQL
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        out.append(("variable", f"{path.name}: ${var['name']}", q))
    for ann in d.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append(("annotation", f"{path.name}: annotation {ann['name']}", ann["expr"]))
    return out


ALL_QUERIES = [q for p in DASHBOARDS for q in _dashboard_queries(p)]


def _rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _known_metric_names() -> set[str]:
    """Sample names the service can expose, from the metric declarations themselves."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        elif family.type == "info":
            names.add(family.name + "_info")
        else:
            names.add(family.name)
    return names


def _label_values(expr: str) -> tuple[str, str] | None:
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", expr)
    return (m.group(1), m.group(2)) if m else None


# ---------------------------------------------------------------- static checks

def test_dashboards_and_rules_name_only_existing_metrics() -> None:
    assert len(DASHBOARDS) >= 2, DASHBOARDS
    known = _known_metric_names()
    assert "stream_monitor_frames_received_total" in known and "stream_monitor_alert_latency_seconds_bucket" in known
    exprs = [(where, e) for _, where, e in ALL_QUERIES] + [(f"rules.yml: {a}", e) for a, e in _rule_exprs()]
    unknown = {(where, name) for where, e in exprs for name in METRIC_RE.findall(e) if name not in known}
    assert not unknown, f"metrics that stream_monitor/metrics.py does not declare: {sorted(unknown)}"
    # A query that names no metric of ours could not fail for a missing one.
    assert all(METRIC_RE.search(e) or re.search(r"\bup\{", e) for _, e in exprs), exprs
    # The check itself catches a typo.
    assert "stream_monitor_frames_recieved_total" not in known


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``datasource`` object in a dashboard, however deep."""
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_dashboards_import_anywhere_and_cover_the_fleet() -> None:
    """No hard-coded datasource uid: every Prometheus reference is ``${DS_PROMETHEUS}``, an
    import input (Grafana's "Import dashboard" asks for it) and a datasource variable (file
    provisioning, which ignores ``__inputs``, picks the default Prometheus: ours)."""
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    [provisioned] = ds["datasources"]
    assert provisioned["type"] == "prometheus" and provisioned["isDefault"] is True
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/provider.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    uids = set()
    for path in DASHBOARDS:
        text = path.read_text()
        d = json.loads(text)
        uids.add(d["uid"])
        assert DATASOURCE_UID not in text, path.name
        assert [(i["name"], i["type"], i["pluginId"]) for i in d["__inputs"]] == \
            [("DS_PROMETHEUS", "datasource", "prometheus")], path.name
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
        refs = list(_datasource_refs(d))
        prometheus_refs = [r for r in refs if r.get("type") != "grafana"]  # the built-in annotations' own
        assert prometheus_refs and all(r == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for r in prometheus_refs), \
            (path.name, [r for r in prometheus_refs if r.get("uid") != "${DS_PROMETHEUS}"])
        for panel in d["panels"]:
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", (path.name, panel["title"])
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
    assert len(uids) == len(DASHBOARDS)
    drill = [json.loads(p.read_text()) for p in DASHBOARDS if p.name == "stream-drilldown.json"][0]
    assert [v["name"] for v in drill["templating"]["list"]] == ["DS_PROMETHEUS", "stream"]
    assert all("$stream" in t["expr"] for panel in drill["panels"] for t in panel["targets"])
    fleet_metrics = {m for _, where, e in ALL_QUERIES if where.startswith("fleet-overview") for m in METRIC_RE.findall(e)}
    # Everything the service exports has a place on the fleet overview (histograms via _bucket or _sum/_count).
    for name in _known_metric_names():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in fleet_metrics or any(m.startswith(base + "_") for m in fleet_metrics), name


# The alerting rules whose threshold a panel draws, and that panel (fleet overview).
OBJECTIVE_PANELS = {"AlertLatencyOverObjective": "Alert latency p50 / p99",
                    "StreamHighDropRate": "Frames dropped before analysis, share of received",
                    "AlertOutboxBackingUp": "Redis outbox"}


def _panels(name: str) -> dict[str, dict[str, Any]]:
    d = json.loads((ROOT / "deploy/grafana/dashboards" / name).read_text())
    return {p["title"]: p for p in d["panels"]}


def _threshold_values(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return [float(s["value"]) for s in steps if s["value"] is not None]


def test_dashboards_draw_the_rules_objectives_and_read_well() -> None:
    fleet = _panels("fleet-overview.json")
    rules = dict(_rule_exprs())
    for alert, title in OBJECTIVE_PANELS.items():
        m = re.search(r">\s*([\d.]+)\s*$", rules[alert].strip())
        assert m, (alert, rules[alert])
        panel = fleet[title]
        # The rule's number is the panel's red line.
        assert float(m.group(1)) in _threshold_values(panel), (alert, title, _threshold_values(panel))
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"].startswith("line"), title
        metrics = set(METRIC_RE.findall(rules[alert]))
        assert metrics & {n for t in panel["targets"] for n in METRIC_RE.findall(t["expr"])}, (alert, title)

    for name in ("fleet-overview.json", "stream-drilldown.json"):
        for title, panel in _panels(name).items():
            exprs = [t["expr"] for t in panel["targets"]]
            unit = panel["fieldConfig"]["defaults"].get("unit", "")
            # Up/down gauges read as words and colours, not 0 and 1.
            if all(re.fullmatch(r"stream_monitor_stream_up(\{[^}]*\})?", e) for e in exprs):
                [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
                assert {k: v["text"] for k, v in mapping["options"].items()} == {"0": "down", "1": "up"}, title
            # Rates say per what: "/s" (or "/min" for "* 60"), not a bare number.
            if all("rate(" in e and "histogram_quantile" not in e and " / " not in e for e in exprs):
                assert unit.endswith("/min" if all(e.endswith("* 60") for e in exprs) else "/s"), (name, title, unit)
            if all(re.search(r"histogram_quantile\(.*_seconds_bucket", e) for e in exprs):
                assert unit == "s", (name, title, unit)
            # Dropped *frames* are the ingest and faces stages; windows are shed elsewhere.
            if "Frames dropped" in title and "frames_dropped_total" in " ".join(exprs):
                assert all('stage=~"ingest|faces"' in e for e in exprs), (title, exprs)
    # Scores have a distribution panel; versions a table.
    [heatmap] = [p for p in fleet.values() if p["type"] == "heatmap"]
    assert "stream_monitor_window_score_bucket" in heatmap["targets"][0]["expr"]
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert any("stream_monitor_build_info" in t["expr"] for p in fleet.values() for t in p["targets"])


# ---------------------------------------------------------------- promtool

def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        unavailable("promtool is not installed (Debian package `prometheus`; scripts/bootstrap.sh test installs it)")
    return exe


def test_promtool_check_rules_and_config() -> None:
    exe = _promtool()
    res = subprocess.run([exe, "check", "rules", "rules.yml"], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_rule_exprs())} rules found" in res.stdout
    res = subprocess.run([exe, "check", "config", "prometheus.yml"], cwd=PROM_DIR, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    exe = _promtool()
    res = subprocess.run([exe, "test", "rules", "rules_test.yml"], cwd=PROM_DIR, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every alerting rule has at least one unit test that expects it to fire.
    tests = yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c["exp_alerts"]}
    assert fired == {a for a, _ in _rule_exprs()}


# ---------------------------------------------------------------- a real Prometheus scraping a running Monitor

class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            unavailable("prometheus is not installed (Debian package `prometheus`; scripts/bootstrap.sh test installs it)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROM_DIR / "rules.yml", workdir / "rules.yml")
        # The shipped scrape config, pointed at the monitor on loopback and sped up for the test.
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        cfg.pop("alerting", None)  # compose's Alertmanager is not here (loopback only; tests/deploy/test_containers.py checks the wiring)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen(
            [exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"))
        wait_until(lambda: self.proc.poll() is None and bool(self.get("/-/ready")), 20, "prometheus", interval=0.2)

    def get(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        res = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
        assert res["status"] == "success", (expr, res)
        return res["data"]["result"]

    def stop(self) -> None:
        stop_process(self.proc)


def _grafana_expr(expr: str, stream: str, range_s: float) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", INTERVAL)
            .replace("$__range", f"{max(1, int(range_s))}s").replace("$stream", stream))


def _has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with at least one finite value (NaN-only series are empty panels)."""
    return any(math.isfinite(float(v)) for s in result for _, v in s["values"])


def _missing(prom: Prometheus, start: float, stream: str) -> dict[str, str]:
    end = time.time()
    missing = {}
    for kind, where, expr in ALL_QUERIES:
        lv = _label_values(expr)
        if lv is not None:  # Grafana's label_values(metric, label) is a series query; ask the same thing
            result = prom.query_range(f"count by ({lv[1]}) ({_grafana_expr(lv[0], stream, end - start)})", start, end)
            if stream not in {s["metric"].get(lv[1]) for s in result}:
                missing[where] = expr
            continue
        if not _has_data(prom.query_range(_grafana_expr(expr, stream, end - start), start, end)):
            missing[where] = expr
    return missing


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path: Path, redis: RedisServer) -> None:
    if shutil.which("prometheus") is None:
        unavailable("prometheus is not installed (Debian package `prometheus`; scripts/bootstrap.sh test installs it)")
    overrides = small_config(
        detectors={"enabled": ["caddm", "sta"], "sta": {"sample_fps": 4.0, "window_stride": 2}},
        faces={"min_size": 20},
        alerts={"threshold": 0.0, "start_after": 1, "end_after": 1},
        redis={"url": redis.url},
        api={"port": None},
        metrics={"port": 0},
        # Both have a face; "busy" sends more frames than CPU face detection can take, so it drops frames
        # (the drill-down is checked on "busy" so that its dropped-frames panel has data).
        streams=[{"id": "synth", "url": "synthetic:?fps=10&size=320x240"},
                 {"id": "busy", "url": "synthetic:?fps=60&size=640x480"}],
    )
    cfg = load_config(overrides=overrides, environ={})

    async def main() -> dict[str, Any]:
        monitor = Service(cfg)
        await monitor.start()
        prom: Prometheus | None = None
        try:
            assert monitor.metrics_port
            prom = await asyncio.to_thread(Prometheus, tmp_path / "prom", monitor.metrics_port)
            start = time.time()
            missing: dict[str, str] = {}
            deadline = time.monotonic() + 75
            while time.monotonic() < deadline:
                missing = await asyncio.to_thread(_missing, prom, start, "busy")
                if not missing:
                    break
                await asyncio.sleep(2)
            end = time.time()
            typo = await asyncio.to_thread(prom.query_range,
                                           f"rate(stream_monitor_frames_recieved_total[{RATE_INTERVAL}])", start, end)
            targets = await asyncio.to_thread(prom.get, "/api/v1/targets")
            rules = await asyncio.to_thread(prom.get, "/api/v1/rules")
            return {"missing": missing, "typo": typo, "targets": targets, "rules": rules}
        finally:
            if prom is not None:
                prom.stop()
            await monitor.stop()

    out = asyncio.run(main())
    assert not out["missing"], "dashboard queries without data:\n" + "\n".join(
        f"  {where}: {expr}" for where, expr in out["missing"].items())
    assert out["typo"] == [], "a misspelled metric must come back empty (else this test could not fail)"
    active = out["targets"]["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in active] == [("stream-monitor", "up")], active
    groups = out["rules"]["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in loaded} == {a for a, _ in _rule_exprs()}
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
