"""``reparam serve`` and ``reparam db``: the service's commands, added to the library's CLI through
the ``reparam.commands`` entry-point group (the library never imports the service); ``reparam
export-kserve`` comes the same way from :mod:`service.kserve.command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Engine

T = TypeVar("T")


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="start the HTTP service (and a managed TorchServe when Java is present)"
    )
    serve.add_argument("--host", default=None, help="default REPARAM_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default REPARAM_PORT or 8000")
    serve.set_defaults(run=_serve)


def add_db_command(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="the metadata database's schema (Alembic migrations)")
    steps = db.add_subparsers(required=True, metavar="STEP")
    upgrade = steps.add_parser("upgrade", help="migrate the database to this release's schema")
    upgrade.set_defaults(run=_db_upgrade)
    current = steps.add_parser("current", help="print the database's schema revision and this release's")
    current.set_defaults(run=_db_current)
    for step in (upgrade, current):
        step.add_argument("--url", default=None, help="SQLAlchemy URL; default REPARAM_DATABASE_URL")


def _serve(args: argparse.Namespace) -> int:
    def load() -> Callable[[str | None, int | None], None]:
        from .main import run

        return run

    _needs_service("serve", load)(args.host, args.port)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    schema, engine = _db(args)
    before, after = schema.upgrade(engine)
    print(f"schema already at {after}" if before == after else f"schema {before or 'empty'} -> {after}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    schema, engine = _db(args)
    with engine.connect() as connection:
        revision = schema.current(connection)
    print(f"database {revision or 'empty'}, this release {schema.head()}")
    return 0


def _db(args: argparse.Namespace) -> tuple[ModuleType, Engine]:
    def load() -> tuple[ModuleType, Engine]:
        from sqlalchemy import create_engine

        from .config import get_settings
        from .store import schema

        url = args.url or get_settings().resolved_database_url
        if url.startswith("sqlite:///"):  # the default's folder may not exist yet
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return schema, create_engine(url)

    return _needs_service("db", load)


def _needs_service(command: str, load: Callable[[], T]) -> T:
    try:
        return load()
    except ImportError as exc:  # installed without the extra: say how to get it
        from reparam_core import ReparamError

        raise ReparamError(
            f"reparam {command} needs the service dependencies ({exc.name} is missing): "
            "pip install 'reparam[service]'"
        ) from None
