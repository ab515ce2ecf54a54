"""The OpenAPI document, adjusted where FastAPI's generated one promises what HTTP cannot carry.

A multipart form has no null: an optional part is simply not sent. FastAPI still types optional
form fields as ``anyOf: [T, null]``, and a client generated from that (or a fuzzer) sends the text
``null``. Here each optional form field is typed as ``T`` alone (still not required).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for form in _form_schemas(schema):
                for name, field in form.get("properties", {}).items():
                    form["properties"][name] = _without_null(field)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _form_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    components = schema.get("components", {}).get("schemas", {})
    forms = []
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("multipart/form-data", {}).get("schema", {}).get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                forms.append(components[ref.rsplit("/", 1)[1]])
    return forms


def _without_null(field: dict[str, Any]) -> dict[str, Any]:
    choices = [c for c in field.get("anyOf", []) if c.get("type") != "null"]
    if len(choices) != 1 or len(choices) == len(field.get("anyOf", [])):
        return field
    return {**{k: v for k, v in field.items() if k not in ("anyOf", "default")}, **choices[0]}
