"""The OpenAPI document and the router agree: every route is described, every described
route exists."""

from __future__ import annotations

import re

from chronosync_scheduler.http import Routes
from chronosync_scheduler.openapi import document


def normalized_routes() -> set[tuple[str, str]]:
    routes = Routes(api=None)  # type: ignore[arg-type]  # handlers are never called here
    return {(method.lower(), re.sub(r"\([^)]*\)", "{}", pattern).replace("\\.", "."))
            for method, pattern in routes.described()}


def normalized_document() -> set[tuple[str, str]]:
    return {(method, re.sub(r"\{[^}]+\}", "{}", path))
            for path, operations in document()["paths"].items() for method in operations}


def test_every_route_is_described() -> None:
    missing = normalized_routes() - normalized_document()
    assert not missing, f"routes without an OpenAPI description: {sorted(missing)}"


def test_every_described_route_exists() -> None:
    extra = normalized_document() - normalized_routes()
    assert not extra, f"OpenAPI describes routes the server lacks: {sorted(extra)}"


def test_the_document_is_openapi_3_with_its_schemas_resolvable() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.")
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(doc["components"]["schemas"])
