"""``reparam serve``: the service's command, added to the library's CLI through the
``reparam.commands`` entry-point group (the library never imports the service); ``reparam
export-kserve`` comes the same way from :mod:`service.kserve.command`."""

from __future__ import annotations

import argparse


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="start the HTTP service (and a managed TorchServe when Java is present)"
    )
    serve.add_argument("--host", default=None, help="default REPARAM_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default REPARAM_PORT or 8000")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .main import run
    except ImportError as exc:  # installed without the extra: say how to get it
        from reparam_core import ReparamError

        raise ReparamError(
            f"reparam serve needs the service dependencies ({exc.name} is missing): "
            "pip install 'reparam[service]'"
        ) from None
    run(args.host, args.port)
    return 0
