"""``/openapi.json`` against the real router: every route described, every description routed,
security as :mod:`stream_monitor.api.auth` enforces it, schemas valid JSON Schema 2020-12, and
real answers of the served API that match their described schemas."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Iterator

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import StaticResource

from stream_monitor.api import build_api
from stream_monitor.api.auth import QUERY_TOKEN_ROUTES, is_open
from stream_monitor.api.openapi import openapi_document
from stream_monitor.service import Service
from stream_monitor.config import load_config
from tests.support.small import small_config

TOKEN = "openapi-test-token-Qx8vN2mLp4Rz7Kw9Yb1"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _monitor() -> Service:
    overrides = small_config(detectors={"enabled": ["caddm"]}, api={"port": 0, "token": TOKEN},
                             alerts={"stdout": False})
    return Service(load_config(overrides=overrides, environ={}))


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route; a static folder is ``PREFIX/{path}``."""
    out = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical
        if isinstance(resource, StaticResource):
            path = path.rstrip("/") + "/{path}"
        out.add((route.method.lower(), path))
    return out


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def mismatch(app: web.Application, doc: dict[str, Any]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(routed but not described, described but not routed); HEAD counts as described with GET."""
    routes, ops = routed(app), described(doc)
    undescribed = {(m, p) for m, p in routes if (m, p) not in ops and not (m == "head" and ("get", p) in ops)}
    return undescribed, ops - routes


@pytest.fixture(scope="module")
def app() -> Iterator[web.Application]:
    yield build_api(_monitor())


def test_every_route_is_described_and_every_description_routed(app: web.Application) -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    assert mismatch(app, doc) == (set(), set())
    assert ("get", "/openapi.json") in routed(app) and ("post", "/streams") in routed(app)
    # The check is real: a new route without a description, and a description without a route, show.
    app2 = build_api(_monitor())
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app2.router.add_get("/undocumented", handler)
    doc2 = openapi_document()
    doc2["paths"]["/ghost"] = {"get": doc2["paths"]["/healthcheck"]["get"]}
    del doc2["paths"]["/predict"]
    undescribed, unrouted = mismatch(app2, doc2)
    assert undescribed == {("get", "/undocumented"), ("head", "/undocumented"), ("post", "/predict")}
    assert unrouted == {("get", "/ghost")}


def _sample(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_security_matches_the_auth_middleware() -> None:
    doc = openapi_document()
    schemes = doc["components"]["securitySchemes"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            names = [n for requirement in op["security"] for n in requirement]
            assert all(n in schemes for n in names), (method, path, names)
            where = f"{method.upper()} {path}"
            if is_open(_sample(path)):
                assert op["security"] == [] and "401" not in op["responses"], where
            elif method == "get" and path in QUERY_TOKEN_ROUTES:
                assert op["security"] == [{"bearer": []}, {"access_token": []}], where
                assert "401" in op["responses"]
            else:
                assert op["security"] == [{"bearer": []}], where
                assert "401" in op["responses"]
            assert "421" in op["responses"], where  # the Host allow-list answers every route


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("schema"), dict):
            yield node["schema"]
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def _inline(schema: Any, doc: dict[str, Any]) -> Any:
    """``schema`` with every local ``$ref`` replaced by its target (raises KeyError on a dangling one)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            target: Any = doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _inline(target, doc)
        return {k: _inline(v, doc) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, doc) for v in schema]
    return schema


def test_schemas_parameters_and_refs_are_valid() -> None:
    doc = openapi_document()
    schemas = list(_schemas(doc)) + list(doc["components"]["schemas"].values())
    assert len(schemas) > 20
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(_inline(schema, doc))
    for path, item in doc["paths"].items():
        placeholders = set(re.findall(r"\{([^}]+)\}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == placeholders, path
        for method, op in item.items():
            if method in METHODS:
                assert op["summary"] and op["responses"], (method, path)
    # The validation is real: a malformed schema is refused.
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema({"type": "integr"})
    with pytest.raises(KeyError):
        _inline({"$ref": "#/components/schemas/Nope"}, doc)


def _response_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    return _inline(doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"], doc)


def test_served_document_and_real_answers_match_it() -> None:
    asyncio.run(_served())


async def _served() -> None:
    monitor = _monitor()
    await monitor.start()
    try:
        port = monitor.api_port
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}"
            async with s.get(base + "/openapi.json") as r:  # open, like the page's files
                assert r.status == 200 and r.content_type == "application/json"
                doc = await r.json()
            assert doc == openapi_document()
            async with s.get(base + "/streams") as r:
                assert r.status == 401
                jsonschema.validate(await r.json(), _response_schema(doc, "get", "/streams", 401))
            async with s.get(base + "/healthcheck") as r:
                jsonschema.validate(await r.json(), _response_schema(doc, "get", "/healthcheck", r.status))
            async with s.post(base + "/streams", json={"id": "cam1", "url": "synthetic:?fps=5&size=128x96"},
                              headers=auth) as r:
                assert r.status == 201 and r.headers["Location"] == "/streams/cam1"
                jsonschema.validate(await r.json(), _response_schema(doc, "post", "/streams", 201))
            async with s.get(base + "/streams", headers=auth) as r:
                body = await r.json()
                jsonschema.validate(body, _response_schema(doc, "get", "/streams", 200))
                assert [st["id"] for st in body["streams"]] == ["cam1"]
            async with s.post(base + "/streams", json={"id": "-bad", "url": "x"}, headers=auth) as r:
                assert r.status == 400
                jsonschema.validate(await r.json(), _response_schema(doc, "post", "/streams", 400))
            # The described id pattern is the one the API enforces.
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate("-bad", _inline({"$ref": "#/components/schemas/StreamId"}, doc))
            async with s.delete(base + "/streams/nope", headers=auth) as r:
                assert r.status == 404
                jsonschema.validate(await r.json(), _response_schema(doc, "delete", "/streams/{id}", 404))
    finally:
        await monitor.stop()
