"""Closed-by-default deployment (issue 11, part 2), with real processes.

- An API bound beyond loopback needs a strong ``api.token``: the rules, the whole config
  path, and ``stream-monitor serve``/``run`` as subprocesses (exit 2, one line, no traceback,
  before any model is loaded).
- Redis runs with the ACL of deploy/redis, started by deploy/redis/start.sh itself: the
  real monitor (fleet, alert publisher, ``GET /events``) and ``alerts tail`` work as the
  ``stream-monitor`` user with nothing refused (ACL LOG stays empty); everything else
  (FLUSHALL, CONFIG, other keys, the default user) is refused; start.sh refuses weak
  passwords; the Compose healthcheck and the Kubernetes readiness command pass and fail
  when they should.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import shutil
import socket
import ssl
import stat
import string
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, cast

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.alerts.publisher import RedisPublisher
from stream_monitor.alerts.tail import tail
from stream_monitor.service import Service
from stream_monitor.config import ConfigError, load_config
from stream_monitor.ingest.urls import redact
from stream_monitor.listen_policy import is_loopback, token_weakness
from tests.support.servers import RedisServer, free_port, unavailable, wait_until
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
STRONG = "Zq3-vX9_pL2mN8rT4yW6kB1cD5fG7hJ0sA"  # 34 characters, 33 distinct, no placeholder word


# ---------------------------------------------------------------- the token rule

def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST.", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("", "0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "my-host",
                 "localhost.evil.example", "127.0.0.1.nip.io"):
        assert not is_loopback(host), host


def test_weak_and_placeholder_tokens_are_named() -> None:
    weak = {None: "not set", "": "not set", "short-but-random-9Xq": "shorter than 32",
            "a" * 40: "distinct", "abababababababababababababababab12": "distinct",
            "change-me": "shorter", "change-me-" + STRONG: "change-me", "CHANGEME" + STRONG: "CHANGEME",
            "changeit" + STRONG: "changeit", STRONG + "-example": "example", "secret-" + STRONG: "secret",
            "password" + STRONG: "password", "token" + STRONG: "token", "your-api-" + STRONG: "your",
            STRONG + "xxxx": "xxxx", "placeholder-" + STRONG: "placeholder", "replace_" + STRONG: "replace",
            "dummy-" + STRONG: "dummy"}
    for token, why in weak.items():
        problem = token_weakness(token)
        assert problem is not None and why in problem, (token, problem)
    assert token_weakness(STRONG) is None
    assert token_weakness(secrets.token_hex(16)) is None  # 32 hex digits: 16 symbols to draw from
    # Generated tokens pass: 2000 token_urlsafe(32)-shaped strings from a fixed seed, all accepted.
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + "-_"
    refused = [t for t in ("".join(rng.choice(alphabet) for _ in range(43)) for _ in range(2000)) if token_weakness(t)]
    assert not refused, refused


def test_exposed_api_needs_a_strong_token() -> None:
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "my-host"):
        for token in (None, "change-me", "short", "x" * 64, "example-" + STRONG):
            with pytest.raises(ConfigError) as info:
                load_config(overrides={"api": {"host": host, "token": token}}, environ={})
            message = str(info.value)
            assert "not a loopback address" in message and HINT in message and "\n" not in message, message
        # The token from the environment counts (compose and k8s pass it that way).
        cfg = load_config(overrides={"api": {"host": host}}, environ={"STREAM_MONITOR_API_TOKEN": STRONG})
        assert cfg.api.token == STRONG
        with pytest.raises(ConfigError, match="not set"):
            load_config(overrides={"api": {"host": host}}, environ={"STREAM_MONITOR_API_TOKEN": ""})
    # Loopback needs no token (a developer's default), and any token is the operator's business.
    for host in ("127.0.0.1", "::1", "localhost"):
        assert load_config(overrides={"api": {"host": host}}, environ={}).api.token is None
        load_config(overrides={"api": {"host": host, "token": "dev"}}, environ={})
    # The metrics listener serves only /metrics and /healthcheck: exposing it needs no token.
    cfg = load_config(overrides={"metrics": {"host": "0.0.0.0", "port": 9108}}, environ={})
    assert cfg.metrics.host == "0.0.0.0" and cfg.api.token is None


def _cli(*args: str, config: Path, env_token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")}
    if env_token is not None:
        env["STREAM_MONITOR_API_TOKEN"] = env_token
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_cli_refuses_an_exposed_api_without_a_token(tmp_path: Path) -> None:
    """`serve` and `run` exit 2 with one line saying why and how to make a token, before any
    model is loaded (the weights directory does not even exist: that error never shows)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"host": "0.0.0.0", "port": free_port()},
                                      "detectors": {"weights_dir": str(tmp_path / "no-weights")}}))
    for args, token in [(("serve",), None), (("serve",), "change-me"), (("run", "synthetic:"), None),
                        (("serve", "--api-port", "0"), "tooShort1234567890")]:
        result = _cli(*args, config=config, env_token=token)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "api.token" in lines[0] and HINT in lines[0] and "Traceback" not in result.stderr, lines
        assert "weights" not in lines[0].replace("weights_dir", "") and result.stdout == ""


# ---------------------------------------------------------------- Redis with the deploy ACL

ADMIN = "acl-test-admin"


def _redis_version() -> tuple[int, ...]:
    exe = shutil.which("redis-server")
    if exe is None:
        unavailable("redis-server is not installed (scripts/test.sh installs it)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(g) for g in m.groups())


def acl_rules(admin_password: str | None) -> str:
    """deploy/redis/users.acl as the test server takes it: unchanged, except that a Redis older
    than 7.2 (which has no CLIENT SETINFO, and redis-py ignores its refusal) does not get that
    one rule, and an admin user may be appended so the test can read ACL LOG."""
    rules = (DEPLOY / "redis/users.acl").read_text(encoding="utf-8")
    if _redis_version() < (7, 2):
        assert " +client|setinfo " in rules
        rules = rules.replace(" +client|setinfo ", " ")
    if admin_password is not None:
        rules += f"user {ADMIN} on >{admin_password} ~* &* +@all\n"
    return rules


def start_sh(tmp: Path, password: str, rules: str) -> tuple[list[str], dict[str, str]]:
    template = tmp / "users.acl.template"
    template.write_text(rules, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "REDIS_ACL_TEMPLATE": str(template),
           "REDIS_ACL_FILE": str(tmp / "users.acl")}
    return ["sh", str(DEPLOY / "redis/start.sh")], env


class AclRedis:
    def __init__(self, tmp: Path) -> None:
        self.password = secrets.token_urlsafe(32)
        self.admin_password = secrets.token_urlsafe(32)
        launcher, env = start_sh(tmp, self.password, acl_rules(self.admin_password))
        self.rendered = Path(env["REDIS_ACL_FILE"])
        self.server = RedisServer(tmp, launcher=launcher, env=env, username="stream-monitor", password=self.password)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, username: str | None = None, password: str | None = None) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.server.port, username=username, password=password,
                              socket_timeout=5)

    def admin(self) -> aioredis.Redis:
        return self.client(ADMIN, self.admin_password)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path)
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop()


def test_start_sh_renders_the_acl_without_the_password(acl_redis: AclRedis) -> None:
    text = acl_redis.rendered.read_text()
    assert stat.S_IMODE(acl_redis.rendered.stat().st_mode) == 0o600
    assert acl_redis.password not in text and "#" + __import__("hashlib").sha256(
        acl_redis.password.encode()).hexdigest() in text
    assert not any(line.startswith("#") or not line.strip() for line in text.splitlines())
    assert text.splitlines()[0].startswith("user default off")


@pytest.mark.parametrize("password, why", [("", "at least 32"), ("short", "at least 32"),
                                            ("a" * 31, "at least 32"), ("p@ss/word:" * 4, "only A-Z"),
                                            ("x" * 40 + "'", "only A-Z"), ("spaces are not ok" * 3, "only A-Z")])
def test_start_sh_refuses_weak_passwords(tmp_path: Path, password: str, why: str) -> None:
    launcher, env = start_sh(tmp_path, password, acl_rules(None))
    port = free_port()
    result = subprocess.run([*launcher, "--port", str(port), "--bind", "127.0.0.1"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and why in result.stderr and len(result.stderr.strip().splitlines()) == 1, result
    assert not Path(env["REDIS_ACL_FILE"]).exists()  # refused before anything is written or started


def _event(seq: int) -> AlertEvent:
    return AlertEvent({"alert_id": "acl-test", "event": "update" if seq else "start", "seq": seq,
                       "stream_id": "cam"}, 0.0)


def test_the_monitor_works_as_the_acl_user(acl_redis: AclRedis, tmp_path: Path) -> None:
    """Fleet (claims, renewals, heartbeat, the view, add/delete through the API), the alert
    publisher (XADD + PUBLISH), GET /events from Pub/Sub and `alerts tail` all run as
    "stream-monitor"; the ACL log shows not one refused command and every key is under the
    prefix."""

    async def main() -> None:
        overrides = small_config(
            worker_name="acl-worker",
            detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}},
            api={"port": 0, "token": STRONG}, alerts={"stdout": False}, redis={"url": acl_redis.url},
            fleet={"enabled": True, "capacity": 2, "lease_ttl_s": 1.5, "tick_s": 0.25,
                   "journal": str(tmp_path / "journal.jsonl")},
            streams=[{"id": "from-config", "url": "synthetic:astronaut?fps=5&size=240x180"}])
        monitor = Service(load_config(overrides=overrides, environ={}))
        await monitor.start()
        headers = {"Authorization": f"Bearer {STRONG}"}
        base = f"http://127.0.0.1:{monitor.api_port}"
        publisher = RedisPublisher(acl_redis.url)
        try:
            async with aiohttp.ClientSession(headers=headers) as s:
                async with s.post(base + "/streams", json={"id": "cam", "url": "synthetic:?fps=5"}) as r:
                    assert r.status == 201, await r.text()
                for _ in range(200):
                    async with s.get(base + "/streams") as r:
                        view = await r.json()
                    owners = {st["id"]: st.get("owner") for st in view["streams"]}
                    if owners == {"cam": "acl-worker", "from-config": "acl-worker"} and "cam" in monitor.streams:
                        break
                    await asyncio.sleep(0.05)
                assert owners == {"cam": "acl-worker", "from-config": "acl-worker"}, view
                assert [w["name"] for w in view["workers"]] == ["acl-worker"]

                # Alerts: the publisher's XADD/PUBLISH reach /events (PSUBSCRIBE) and `alerts tail`.
                await publisher.start()
                assert publisher.problems() == []
                got: list[dict[str, Any]] = []

                async def first_alert(feed: aiohttp.ClientResponse) -> None:
                    # Publish once the feed says it is subscribed, and again on each later event
                    # (a "streams" event comes every second) until the alert arrives.
                    subscribed, seq = False, 0
                    async for raw in feed.content:
                        line = raw.decode().strip()
                        if line.startswith("data:") and '"alert_id":"acl-test"' in line:
                            got.append(json.loads(line[5:]))
                            return
                        if line.startswith("data:") and '"source":"redis"' in line:
                            assert json.loads(line[5:])["ok"] is True, line
                            subscribed = True
                        if subscribed and line.startswith("data:"):
                            publisher.publish(_event(seq))
                            seq += 1

                async with s.get(base + "/events") as feed:
                    await asyncio.wait_for(first_alert(feed), 30)
                assert got and got[0]["stream_id"] == "cam"
                lines: list[str] = []
                tailing = asyncio.create_task(tail(acl_redis.url, "deepfake", None, 1, 1, lines.append))
                for _ in range(250):  # the history line first, then subscribe and wait for a live one
                    if lines:
                        break
                    await asyncio.sleep(0.02)
                assert lines, "no history line from XREVRANGE"
                for seq in range(100, 300):
                    publisher.publish(_event(seq))
                    done, _ = await asyncio.wait({tailing}, timeout=0.1)
                    if done:
                        break
                await asyncio.wait_for(tailing, 5)
                assert len(lines) == 2 and json.loads(lines[1])["seq"] >= 100, lines
                # One stream's channel (SUBSCRIBE instead of PSUBSCRIBE).
                one: list[str] = []
                tailing = asyncio.create_task(tail(acl_redis.url, "deepfake", "cam", 0, 1, one.append))
                for seq in range(300, 500):
                    publisher.publish(_event(seq))
                    done, _ = await asyncio.wait({tailing}, timeout=0.1)
                    if done:
                        break
                await asyncio.wait_for(tailing, 5)
                assert json.loads(one[0])["stream_id"] == "cam"

                async with s.delete(base + "/streams/cam") as r:
                    assert r.status in (202, 204)
                for _ in range(200):
                    if "cam" not in monitor.streams:
                        break
                    await asyncio.sleep(0.05)
                assert "cam" not in monitor.streams
        finally:
            await publisher.close()
            await monitor.stop(grace=5.0)

        admin = acl_redis.admin()
        try:
            denied = await admin.execute_command("ACL", "LOG")
            assert denied == [], denied
            keys = sorted(k.decode() for k in cast(list[bytes], await admin.keys("*")))
            assert keys and all(k.startswith("deepfake:") for k in keys), keys
            assert await admin.xlen("deepfake:alerts") >= 2
        finally:
            await admin.aclose()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_everything_else_is_refused(acl_redis: AclRedis) -> None:
    async def main() -> None:
        user = acl_redis.client("stream-monitor", acl_redis.password)
        admin = acl_redis.admin()
        try:
            await user.set("deepfake:keep", "1")
            refused: list[tuple[Any, ...]] = [
                ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"),
                ("KEYS", "*"), ("SCAN", "0"), ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"),
                ("SHUTDOWN", "NOSAVE"), ("REPLICAOF", "127.0.0.2", "6379"), ("MODULE", "LIST"), ("ACL", "LIST"),
                ("CLIENT", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("SWAPDB", "0", "1"), ("INFO",),
                ("SET", "other:key", "1"), ("GET", "other:key"), ("DEL", "other:key"), ("PUBLISH", "other", "x"),
                ("PUBLISH", "deepfake:not-alerts", "x"), ("MIGRATE", "127.0.0.2", "6379", "k", "0", "1"),
                ("BGSAVE",), ("MONITOR",),
            ]
            for command in refused:
                with pytest.raises(NoPermissionError):
                    await user.execute_command(*command)
            # A script it loads runs with its permissions, not more.
            sha = await user.script_load("return redis.call('FLUSHALL')")
            with pytest.raises(ResponseError, match="can't run this command"):
                await user.evalsha(sha, 0)
            sha = await user.script_load("return redis.call('SET', KEYS[1], '1')")
            with pytest.raises(ResponseError, match="(?i)no permissions|can't access"):
                await user.evalsha(sha, 1, "other:key")
            assert await user.evalsha(sha, 1, "deepfake:ok") == b"OK"
            pubsub = user.pubsub()  # the refusal is the reply to PSUBSCRIBE, read as the next message
            with pytest.raises(NoPermissionError):
                await pubsub.psubscribe("*")
                await pubsub.get_message(timeout=5)
            await pubsub.aclose()

            # No one gets in without the password: the default user is off.
            for username, password in [(None, None), ("default", "anything"), ("stream-monitor", "wrong-" * 6),
                                       (ADMIN, acl_redis.password)]:
                outsider = acl_redis.client(username, password)
                with pytest.raises((AuthenticationError, ResponseError)):
                    await outsider.ping()
                await outsider.aclose()
            assert await admin.get("deepfake:keep") == b"1" and await admin.dbsize() == 2
        finally:
            await user.aclose()
            await admin.aclose()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_health_commands_of_compose_and_kubernetes(acl_redis: AclRedis, tmp_path: Path) -> None:
    """The Compose healthcheck and the StatefulSet's readiness command, run by sh as written
    (a redis-cli shim on PATH only adds this server's port): they pass with the password
    Redis was started with, and fail with another or none."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    test = compose["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    compose_cmd = test[1].replace("$$", "$")  # Compose's escape for a literal "$"
    statefulset = next(d for d in yaml.safe_load_all((DEPLOY / "k8s/redis.yaml").read_text())
                       if d["kind"] == "StatefulSet")
    probe = statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"]
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        unavailable("redis-cli is not installed")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "redis-cli").write_text(f'#!/bin/sh\nexec {redis_cli} -p {acl_redis.server.port} "$@"\n')
    (shim / "redis-cli").chmod(0o755)

    def run(command: str, password: str | None) -> int:
        env = {"PATH": f"{shim}:{os.environ['PATH']}"}
        if password is not None:
            env["REDIS_PASSWORD"] = password
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=30).returncode

    for command in (compose_cmd, probe[2]):
        assert run(command, acl_redis.password) == 0, command
        assert run(command, "wrong-" + acl_redis.password) != 0, command
        assert run(command, None) != 0, command


def _tls_files(tmp: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed")
    files = {name: tmp / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "san.ext")}
    files["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in ([openssl, "req", "-x509", *ec, "-keyout", files["ca.key"], "-out", files["ca.pem"], "-days", "1",
                  "-subj", "/CN=stream-monitor test CA"],
                 [openssl, "req", *ec, "-keyout", files["server.key"], "-out", files["server.csr"],
                  "-subj", "/CN=redis"],
                 [openssl, "x509", "-req", "-in", files["server.csr"], "-CA", files["ca.pem"],
                  "-CAkey", files["ca.key"], "-CAcreateserial", "-out", files["server.pem"], "-days", "1", "-extfile", files["san.ext"]]):
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=60)
    return files


def test_rediss_with_the_acl(tmp_path: Path) -> None:
    """rediss:// works end to end: Redis serving TLS only (started by start.sh with the deploy
    ACL), the monitor's fleet and publisher and `alerts tail` connecting with
    ``?ssl_ca_certs=``; the URL is shown without its password; plaintext gets nowhere."""
    files = _tls_files(tmp_path)
    password = secrets.token_urlsafe(32)
    launcher, env = start_sh(tmp_path, password, acl_rules(None))
    port = free_port()
    proc = subprocess.Popen([*launcher, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
                             "--tls-cert-file", str(files["server.pem"]), "--tls-key-file", str(files["server.key"]),
                             "--tls-ca-cert-file", str(files["ca.pem"]), "--tls-auth-clients", "no",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(files["ca.pem"]))

    def tls_ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(f"AUTH stream-monitor {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == b"+OK\r\n+PONG\r\n"

    url = f"rediss://stream-monitor:{password}@127.0.0.1:{port}/0?ssl_ca_certs={files['ca.pem']}"
    try:
        wait_until(tls_ping, 10, "redis-server (TLS)")

        async def main() -> None:
            overrides = small_config(
                worker_name="tls-worker",
                detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}},
                api={"port": 0}, alerts={"stdout": False}, redis={"url": url},
                fleet={"enabled": True, "capacity": 1, "lease_ttl_s": 1.5, "tick_s": 0.25},
                streams=[{"id": "cam", "url": "synthetic:?fps=5"}])
            monitor = Service(load_config(overrides=overrides, environ={}))
            await monitor.start()
            publisher = RedisPublisher(url)
            try:
                assert monitor.fleet is not None
                for _ in range(200):
                    view = await monitor.fleet.view()
                    if view["streams"] and view["streams"][0].get("owner") == "tls-worker":
                        break
                    await asyncio.sleep(0.05)
                assert view["streams"][0]["owner"] == "tls-worker", view
                await publisher.start()
                assert publisher.problems() == []
                publisher.publish(_event(0))
                check = aioredis.Redis.from_url(url, socket_timeout=5)
                try:
                    for _ in range(200):
                        if await check.xrevrange("deepfake:alerts", count=1):  # (XLEN is not granted)
                            break
                        await asyncio.sleep(0.05)
                finally:
                    await check.aclose()
                # `alerts tail`: the durable log's last alert (XREVRANGE), then a live one (PSUBSCRIBE).
                lines: list[str] = []
                tailing = asyncio.create_task(tail(url, "deepfake", None, 1, 1, lines.append))
                for _ in range(250):
                    if lines:
                        break
                    await asyncio.sleep(0.02)
                for seq in range(1, 300):
                    publisher.publish(_event(seq))
                    done, _ = await asyncio.wait({tailing}, timeout=0.1)
                    if done:
                        break
                await asyncio.wait_for(tailing, 5)
                assert [json.loads(line)["seq"] for line in lines][0] == 0 and len(lines) == 2, lines
            finally:
                await publisher.close()
                await monitor.stop(grace=5.0)

        asyncio.run(asyncio.wait_for(main(), 120))
        # Shown without the password; the CA path is not a secret and stays.
        assert redact(url) == f"rediss://stream-monitor:***@127.0.0.1:{port}/0?ssl_ca_certs={files['ca.pem']}"
        # Plaintext on the TLS port gets no answer a client could use.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"AUTH stream-monitor {password}\r\nPING\r\n".encode())
            try:
                reply = s.recv(64)
            except (ConnectionResetError, socket.timeout):
                reply = b""
            assert b"PONG" not in reply and b"+OK" not in reply
    finally:
        proc.terminate()
        proc.wait(10)

