"""Model versions and conversion jobs in a SQL database (SQLite file by default, PostgreSQL by URL).

Versions are immutable once written. The same checkpoint + spec + serving options posted again
under the same name resolves to the existing version (``find_duplicate``). Columns added after a
database was created are added to it at start-up (``_add_missing_columns``); rows written before
the ``serving`` column existed read as served with the default options.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from reparam_core.deploy import ServingOptions


class _Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Version(_Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    spec_sha256: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON)
    serving: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Job(_Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: int
    digest: str
    checkpoint_sha256: str
    spec_sha256: str
    spec: dict[str, Any]
    report: dict[str, Any]
    timings: dict[str, Any]
    serving: dict[str, Any]
    created_at: dt.datetime

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "digest": self.digest,
            "arch": self.report.get("arch"),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    status: str  # queued | running | succeeded | failed
    result: dict[str, Any] | None


def _record(row: _Version) -> VersionRecord:
    return VersionRecord(
        name=row.name,
        version=row.version,
        digest=row.digest,
        checkpoint_sha256=row.checkpoint_sha256,
        spec_sha256=row.spec_sha256,
        spec=row.spec,
        report=row.report,
        timings=row.timings,
        serving=row.serving if row.serving is not None else ServingOptions().model_dump(mode="json"),
        created_at=row.created_at,
    )


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns this version of the schema has and an older database lacks."""
    present = {c["name"] for c in inspect(engine).get_columns(_Version.__tablename__)}
    missing = [c for c in _Version.__table__.columns if c.name not in present and c.nullable]
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(text(f"ALTER TABLE {_Version.__tablename__} ADD COLUMN {column.name} {kind}"))


class MetadataStore:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=True)
        _Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def add_version(
        self,
        name: str,
        digest: str,
        checkpoint_sha256: str,
        spec_sha256: str,
        spec: dict[str, Any],
        report: dict[str, Any],
        timings: dict[str, Any],
        serving: dict[str, Any],
    ) -> VersionRecord:
        """Insert the next version of ``name`` (retrying if another writer took the number)."""
        for _ in range(5):
            try:
                with self._session() as s:
                    latest = s.scalar(select(func.max(_Version.version)).where(_Version.name == name)) or 0
                    row = _Version(
                        name=name,
                        version=latest + 1,
                        digest=digest,
                        checkpoint_sha256=checkpoint_sha256,
                        spec_sha256=spec_sha256,
                        spec=spec,
                        report=report,
                        timings=timings,
                        serving=serving,
                    )
                    s.add(row)
                    s.flush()
                    return _record(row)
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a version number for {name!r}")

    def find_duplicate(
        self, name: str, checkpoint_sha256: str, spec_sha256: str, serving: dict[str, Any]
    ) -> VersionRecord | None:
        with self._session() as s:
            rows = s.scalars(
                select(_Version)
                .where(
                    _Version.name == name,
                    _Version.checkpoint_sha256 == checkpoint_sha256,
                    _Version.spec_sha256 == spec_sha256,
                )
                .order_by(_Version.version.desc())
            )
            records = (_record(row) for row in rows)
            return next((r for r in records if r.serving == serving), None)

    def get_version(self, name: str, version: int | None = None) -> VersionRecord | None:
        """A version, or the latest one of ``name`` when ``version`` is None."""
        with self._session() as s:
            query = select(_Version).where(_Version.name == name)
            query = query.where(_Version.version == version) if version is not None else query
            row = s.scalars(query.order_by(_Version.version.desc())).first()
            return _record(row) if row else None

    def versions(self, name: str | None = None) -> list[VersionRecord]:
        with self._session() as s:
            query = select(_Version).order_by(_Version.name, _Version.version)
            if name is not None:
                query = query.where(_Version.name == name)
            return [_record(row) for row in s.scalars(query)]

    def delete_version(self, name: str, version: int) -> VersionRecord | None:
        with self._session() as s:
            row = s.scalars(
                select(_Version).where(_Version.name == name, _Version.version == version)
            ).first()
            if row is None:
                return None
            record = _record(row)
            s.delete(row)
            return record

    def digest_in_use(self, digest: str) -> bool:
        with self._session() as s:
            return (s.scalar(select(func.count()).where(_Version.digest == digest)) or 0) > 0

    def create_job(self, name: str) -> JobRecord:
        with self._session() as s:
            job = _Job(id=uuid.uuid4().hex, name=name, status="queued")
            s.add(job)
            return JobRecord(job.id, job.name, job.status, None)

    def update_job(self, job_id: str, status: str, result: dict[str, Any] | None = None) -> None:
        with self._session() as s:
            job = s.get(_Job, job_id)
            if job is not None:
                job.status, job.result, job.updated_at = status, result, _now()

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._session() as s:
            job = s.get(_Job, job_id)
            return JobRecord(job.id, job.name, job.status, job.result) if job else None
