"""``reparam remote``: a running service driven from a shell or a CI job, over HTTP (httpx).

``--url`` and ``--token`` default to ``REPARAM_URL`` and ``REPARAM_API_TOKEN``. It prints a short
summary, or the service's JSON with ``--json``. Exit codes for CI: 0 done, 1 the equivalence gate
failed (422 with a report), 2 refused (any other 4xx: bad input, unknown model or version, missing
token, conflict), 3 the service failed (5xx) or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_SERVICE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_TYPES = {".png": "image/png", ".webp": "image/webp"}  # any other: image/jpeg (read by content)
BATCH = 64  # images per request: the service's limit

Action = Callable[[argparse.Namespace], tuple[Any, str]]


class Failed(Exception):
    """A request that did not succeed: the exit code, one line for stderr, the service's answer."""

    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code, self.body = code, body


def add_remote_command(commands: argparse._SubParsersAction) -> None:
    remote = commands.add_parser(
        "remote", help="drive a running reparam service over HTTP (convert, predict, aliases, delete)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("REPARAM_URL") or DEFAULT_URL, help="REPARAM_URL")
    common.add_argument("--token", default=os.environ.get("REPARAM_API_TOKEN"), help="REPARAM_API_TOKEN")
    common.add_argument("--json", action="store_true", help="print the service's JSON answer")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    actions = remote.add_subparsers(required=True, metavar="ACTION")

    convert = actions.add_parser("convert", parents=[common], help="convert, prove and register a checkpoint")
    convert.add_argument("checkpoint", type=Path)
    convert.add_argument("--spec", required=True, help="the spec: a file, or JSON text")
    convert.add_argument("--name", required=True, help="the model name")
    convert.add_argument("--tolerance", type=float, help="max fp64 relative error")
    convert.add_argument("--serving", help='serving options, JSON, e.g. {"precision": "fp16"}')
    convert.add_argument("--reference", type=Path, help="safetensors of inputs and your model's outputs")
    convert.add_argument("--alias", help="point this alias at the version once it is registered")
    convert.set_defaults(run=_runner(_convert))

    predict = actions.add_parser("predict", parents=[common], help="classify images")
    predict.add_argument("name")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--version", help="a version number or an alias (default: the served default)")
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(run=_runner(_predict))

    models = actions.add_parser("models", parents=[common], help="list models, versions and aliases")
    models.add_argument("name", nargs="?")
    models.set_defaults(run=_runner(_models))

    alias = actions.add_parser("alias", parents=[common], help="point an alias at a version, or --delete it")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", nargs="?", type=int)
    alias.add_argument("--delete", action="store_true", help="remove the alias")
    alias.set_defaults(run=_runner(_alias))

    delete = actions.add_parser("delete", parents=[common], help="delete a version, or a whole model")
    delete.add_argument("name")
    delete.add_argument("--version", type=int, help="only this version (default: the model, all of it)")
    delete.set_defaults(run=_runner(_delete))


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            body, summary = action(args)
        except Failed as exc:
            if args.json and exc.body is not None:
                print(json.dumps(exc.body, indent=2))
            print(f"reparam remote: {exc}", file=sys.stderr)
            return exc.code
        print(json.dumps(body, indent=2) if args.json else summary)
        return EXIT_OK

    return run


def _call(args: argparse.Namespace, method: str, path: str, **request: Any) -> Any:
    """The JSON answer of a request that succeeded (None when it has no body); else :class:`Failed`."""
    try:
        import httpx
    except ImportError:
        raise Failed(EXIT_INPUT, "reparam remote needs httpx: pip install 'reparam[service]'") from None
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    url = args.url.rstrip("/") + path
    try:
        response = httpx.request(
            method, url, headers=headers | request.pop("headers", {}), timeout=args.timeout, **request
        )
    except httpx.HTTPError as exc:
        raise Failed(EXIT_SERVICE, f"{method} {url}: {exc or type(exc).__name__}") from None
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = {"detail": response.text[:500]}
    if response.is_success:
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    status = response.status_code
    if status == 422 and isinstance(body, dict) and body.get("report") is not None:
        code = EXIT_GATE
    else:
        code = EXIT_INPUT if 400 <= status < 500 else EXIT_SERVICE
    raise Failed(code, f"{method} {path}: {status} {detail or response.reason_phrase}", body)


def _path(*parts: str) -> str:
    """A URL path of these segments, each quoted whole (a name cannot reach another endpoint)."""
    return "".join(f"/{quote(part, safe='')}" for part in parts)


def _text(value: str) -> str:
    """``--spec``: the text of a file, or the value itself (JSON)."""
    if value.lstrip().startswith(("{", "[")) or "\n" in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise Failed(
            EXIT_INPUT, f"--spec {value!r}: not JSON and not a readable file ({exc.strerror})"
        ) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Failed(EXIT_INPUT, f"{path}: {exc.strerror}") from None


def _convert(args: argparse.Namespace) -> tuple[Any, str]:
    form = {"spec": _text(args.spec), "name": args.name}
    if args.tolerance is not None:
        form["tolerance"] = str(args.tolerance)
    if args.serving is not None:
        form["serving"] = args.serving
    files = {"checkpoint": (args.checkpoint.name, _read(args.checkpoint), "application/octet-stream")}
    if args.reference is not None:
        files["reference"] = (args.reference.name, _read(args.reference), "application/octet-stream")
    body = _call(args, "POST", "/convert", data=form, files=files)
    report = body["report"]
    summary = (
        f"{body['model']} v{body['version']} {'stored' if body['created'] else 'converted before'}: "
        f"equivalence {'passed' if report.get('passed') else 'failed'}, digest {body['digest'][:12]}"
    )
    if args.alias:
        path = _path("models", args.name, "aliases", args.alias)
        moved = _call(args, "PUT", path, json={"version": body["version"]})
        body = {**body, "alias": moved}
        summary += f"\n{_moved(moved)}"
    return body, summary


def _moved(moved: dict[str, Any]) -> str:
    was = f"was v{moved['previous']}" if moved["previous"] is not None else "new"
    return f"{moved['model']}: {moved['alias']} -> v{moved['version']} ({was}; by {moved['moved_by']})"


def _predict(args: argparse.Namespace) -> tuple[Any, str]:
    query: dict[str, Any] = {"top_k": args.top_k}
    if args.version is not None:
        query["version"] = args.version
    answers, lines = [], []
    for start in range(0, len(args.images), BATCH):  # each batch one request, answered as one batch
        images = args.images[start : start + BATCH]
        parts = [
            ("images", (image.name, _read(image), IMAGE_TYPES.get(image.suffix.lower(), "image/jpeg")))
            for image in images
        ]
        body = _call(args, "POST", _path("predict", args.name), params=query, files=parts)
        for image, predictions in zip(images, body["predictions"], strict=True):
            answers.append({"model": body["model"], "version": body["version"], "predictions": [predictions]})
            top = ", ".join(
                f"{p['label'] if p['label'] is not None else p['index']} {p['probability']:.3f}"
                for p in predictions
            )
            lines.append(f"{image}: {body['model']} v{body['version']}: {top}")
    return answers, "\n".join(lines)


def _models(args: argparse.Namespace) -> tuple[Any, str]:
    if args.name:
        body = _call(args, "GET", _path("models", args.name))
        return body, _model_line(body)
    body = _call(args, "GET", "/models")
    return body, "\n".join(_model_line(model) for model in body) or "no models"


def _model_line(model: dict[str, Any]) -> str:
    versions = ", ".join(f"v{v['version']}" for v in model["versions"])
    aliases = ", ".join(f"{name} -> v{a['version']}" for name, a in model["aliases"].items())
    return f"{model['model']}: {versions} (latest v{model['latest']})" + (f"; {aliases}" if aliases else "")


def _alias(args: argparse.Namespace) -> tuple[Any, str]:
    path = _path("models", args.name, "aliases", args.alias)
    if args.delete == (args.version is not None):
        raise Failed(EXIT_INPUT, "give either a VERSION to point the alias at, or --delete")
    if args.delete:
        _call(args, "DELETE", path)
        removed = {"model": args.name, "alias": args.alias, "deleted": True}
        return removed, f"{args.name}: {args.alias} removed"
    moved = _call(args, "PUT", path, json={"version": args.version})
    return moved, _moved(moved)


def _delete(args: argparse.Namespace) -> tuple[Any, str]:
    if args.version is None:
        _call(args, "DELETE", _path("models", args.name))
        return {"model": args.name, "deleted": True}, f"deleted model {args.name} (every version)"
    _call(args, "DELETE", _path("models", args.name, "versions", str(args.version)))
    deleted = {"model": args.name, "version": args.version, "deleted": True}
    return deleted, f"deleted {args.name} v{args.version}"
