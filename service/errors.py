"""Service errors, and the one place where every domain error becomes an HTTP response.

    ServiceError
    ├── NotFound             unknown model, version, job or artifact          404
    ├── Conflict             other architecture under a name; aliased version 409
    ├── URITooLong           a GET /predict image past its query limit          414
    ├── UnsupportedMedia     a body type /predict does not take               415
    ├── BadInput             undecodable image, wrong tensor shape, ...       422
    ├── BackendUnavailable   the inference backend is down or overloaded      503 + Retry-After
    └── NotReady             an artifact still being written (.onnx, .pt2)   503 + Retry-After
Library errors: SpecError 422, CheckpointError 400, EquivalenceError 422 (with the report),
other ReparamError 400. Bodies past the size caps get 413, too slow 408 (``limits.BodyLimits``). Nothing
escapes as a 500 with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from reparam_core import EquivalenceError, ReparamError, SpecError

log = logging.getLogger("reparam.service")


class ServiceError(Exception):
    status = 400
    retry_after_s: int | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class UnsupportedMedia(ServiceError):
    status = 415


class BadInput(ServiceError):
    status = 422


class URITooLong(ServiceError):
    status = 414


class BackendUnavailable(ServiceError):
    status = 503
    retry_after_s = 5


class NotReady(ServiceError):
    status = 503
    retry_after_s = 2


class ErrorBody(BaseModel):
    """Every error answer: one line saying what is wrong (a failed gate adds its ``report``)."""

    model_config = ConfigDict(extra="allow")
    detail: str


WHY = {
    400: "unreadable or mismatching checkpoint",
    401: "missing or invalid bearer token (REPARAM_API_TOKEN)",
    404: "no such model, version, job or artifact",
    405: "method not allowed (the Allow header lists those that are)",
    408: "request body too slow",
    409: "another architecture under this model name, or an alias points at the version",
    413: "request body over its size cap",
    414: "query too long: send the image in a POST body",
    415: "a body type this endpoint does not take",
    422: "invalid parameters or body",
    503: "inference backend unavailable, or an artifact still being written (transient; see Retry-After)",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, all with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": WHY[status]} for status in (*statuses, 422)}


def status_for(exc: Exception) -> int:
    """The HTTP status of a domain error (500 for anything else: a bug)."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, EquivalenceError | SpecError):
        return 422
    return 400 if isinstance(exc, ReparamError) else 500


def _json(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return _json(exc.status, exc.detail, headers, **exc.extra)

    @app.exception_handler(EquivalenceError)
    async def gate_failed(_: Request, exc: EquivalenceError) -> JSONResponse:
        report = exc.report.model_dump(mode="json") if exc.report is not None else None
        return _json(422, str(exc), report=report)

    @app.exception_handler(ReparamError)
    async def bad_input(_: Request, exc: ReparamError) -> JSONResponse:
        return _json(status_for(exc), str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # one route per method: list every method of the path
            headers["Allow"] = ", ".join(sorted(_methods_of(request)))
        return _json(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, describe_problems(exc.errors()) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _json(500, f"internal error ({type(exc).__name__}); see the service log")


def _methods_of(request: Request) -> set[str]:
    routes = request.app.router.routes
    return {
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }


def describe_problems(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> str:
    """``where: what is wrong (got 'value')`` per validation error; values only when short and plain."""
    lines = []
    for error in errors:
        where = ".".join(str(p) for p in (*prefix, *error["loc"]))
        value = error.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and len(repr(value)) <= 80 else ""
        lines.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(lines)
