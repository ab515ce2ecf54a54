"""Model versions and conversion jobs in a SQL database (SQLite file by default, PostgreSQL by URL).

Versions are immutable: a number, once given, names one conversion forever. ``models`` keeps each
name's last number, so deleting v2 never lets another conversion become v2. The same checkpoint +
spec + serving options under one name is one version, enforced by a unique index: a concurrent
identical insert finds the row that won (``add_version`` answers ``created=False``). Rows written
before the ``serving`` column existed read as served with the default options.

Aliases (``production``, ``default``, ...) name one version of a model each; every move (a set, a
change, a removal) is kept in ``alias_moves`` with who made it and when. An alias is written and a
version deleted under the model's row lock (``_lock``), so an alias never points at a missing version.
The tables are created and changed by Alembic migrations (``schema``), at start-up unless told not to.

Conversion jobs are a queue any replica takes from (``claim_job``): every change of a claimed job is
a compare-and-set on its claim (owner and attempt), so one replica at a time runs a job, and one
whose lease ran out (``heartbeat`` stopped) can no longer write to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    CursorResult,
    DateTime,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Update,
    and_,
    create_engine,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from reparam_core.deploy import ServingOptions

from . import schema


class _Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Model(_Base):
    """A model name and the last version number it ever gave (deleted versions included)."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Version(_Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(
            "one_version_per_conversion",
            "name",
            "checkpoint_sha256",
            "spec_sha256",
            "serving_sha256",
            unique=True,
        ),
    )

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
    serving_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Alias(_Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    moved_by: Mapped[str] = mapped_column(String(64))
    moved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _AliasMove(_Base):
    """One move of an alias: ``from_version`` None when it was set, ``to_version`` None when removed."""

    __tablename__ = "alias_moves"
    __table_args__ = (Index("alias_moves_by_alias", "name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moved_by: Mapped[str] = mapped_column(String(64))
    moved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


# Serving fields added after versions were first stored, with their default: left out of the digest
# at that default, so an identical request still finds a version stored before the field existed
# (revision 0004 computed every stored digest so; a new field needs such a revision too).
LATER_DEFAULTS = {"runtime": "torch", "int8_min_agreement": 0.99, "int8_float_layers": 0}


def serving_digest(serving: dict[str, Any]) -> str:
    canonical = {k: v for k, v in serving.items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Job(_Base):
    """A conversion job: queued with its request, claimed by one replica (``owner``), which keeps
    ``heartbeat_at`` fresh while it runs it; ``attempts`` counts the claims."""

    __tablename__ = "jobs"
    __table_args__ = (Index("jobs_by_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # the stage under way and the seconds each finished one took (the conversion's own order)
    stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    stages: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # None: before 0003
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


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
            "serving": self.serving,
            "created_at": self.created_at.isoformat(),
        }


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # SQLite drops the zone


@dataclass(frozen=True)
class AliasRecord:
    alias: str
    version: int
    moved_by: str
    moved_at: dt.datetime

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "moved_by": self.moved_by, "moved_at": self.moved_at.isoformat()}


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: int | None
    to_version: int | None
    moved_by: str
    moved_at: dt.datetime

    def summary(self) -> dict[str, Any]:
        return {
            "from": self.from_version,
            "to": self.to_version,
            "moved_by": self.moved_by,
            "moved_at": self.moved_at.isoformat(),
        }


JobState = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    status: JobState
    result: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime
    stage: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    request: dict[str, Any] | None = None
    owner: str | None = None  # the replica that claimed it last
    heartbeat_at: dt.datetime | None = None
    attempts: int = 0  # claims so far: the one under way included


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
        created_at=_utc(row.created_at),
    )


def _update_jobs() -> Update:
    """An UPDATE of jobs that leaves rows loaded in the session as they are (its condition may
    compare SQLite's zone-less times, which the ORM cannot evaluate in Python)."""
    return update(_Job).execution_options(synchronize_session=False)


def _stages_ended(row: _Job, now: dt.datetime) -> dict[str, float]:
    """The job's stage timings with the stage under way (if any) ended ``now``."""
    stages = dict(row.stages or {})
    if row.stage is not None:
        stages[row.stage] = round((now - _utc(row.updated_at)).total_seconds(), 3)
    return stages


def _job_record(row: _Job) -> JobRecord:
    return JobRecord(
        row.id,
        row.name,
        cast(JobState, row.status),
        row.result,
        _utc(row.created_at),
        _utc(row.updated_at),
        row.stage,
        dict(row.stages or {}),
        row.request,
        row.owner,
        _utc(row.heartbeat_at) if row.heartbeat_at is not None else None,
        row.attempts,
    )


def _alias_record(row: _Alias) -> AliasRecord:
    return AliasRecord(row.alias, row.version, row.moved_by, _utc(row.moved_at))


class MetadataStore:
    def __init__(self, url: str, migrate: bool = True) -> None:
        """``migrate``: bring the schema to this release's (Alembic), else refuse a database that is
        behind it (:class:`~service.store.schema.SchemaOutOfDate`)."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=True)
        if migrate:
            schema.upgrade(self.engine)
        else:
            schema.require_current(self.engine)
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
    ) -> tuple[VersionRecord, bool]:
        """Insert the next version of ``name``: ``(record, True)``; or, when the same conversion
        is already stored (a concurrent identical request won), ``(that record, False)``."""
        for _ in range(20):
            try:
                with self._session() as s:
                    number = self._next_number(s, name)
                    row = _Version(
                        name=name,
                        version=number,
                        digest=digest,
                        checkpoint_sha256=checkpoint_sha256,
                        spec_sha256=spec_sha256,
                        spec=spec,
                        report=report,
                        timings=timings,
                        serving=serving,
                        serving_sha256=serving_digest(serving),
                    )
                    s.add(row)
                    s.flush()
                    return _record(row), True
            except (IntegrityError, OperationalError):  # a concurrent writer; see who won, else retry
                existing = self.find_duplicate(name, checkpoint_sha256, spec_sha256, serving)
                if existing is not None:
                    return existing, False
        raise RuntimeError(f"could not allocate a version number for {name!r}")

    @staticmethod
    def _next_number(s: Session, name: str) -> int:
        """Take the next number of ``name`` in this transaction (the UPDATE locks the row first)."""
        bumped: CursorResult[Any] = s.execute(  # type: ignore[assignment]
            update(_Model).where(_Model.name == name).values(last_version=_Model.last_version + 1)
        )
        if bumped.rowcount == 0:  # first version of this name (or a database from before `models`)
            latest = s.scalar(select(func.max(_Version.version)).where(_Version.name == name)) or 0
            s.add(_Model(name=name, last_version=latest + 1))
            s.flush()
        number = s.scalar(select(_Model.last_version).where(_Model.name == name))
        assert number is not None
        return number

    def set_timings(self, record: VersionRecord, timings: dict[str, Any]) -> VersionRecord:
        """The whole conversion's timings, registration included (known once the row exists)."""
        with self._session() as s:
            s.execute(
                update(_Version)
                .where(_Version.name == record.name, _Version.version == record.version)
                .values(timings=timings)
            )
        return dataclasses.replace(record, timings=timings)

    def find_duplicate(
        self, name: str, checkpoint_sha256: str, spec_sha256: str, serving: dict[str, Any]
    ) -> VersionRecord | None:
        with self._session() as s:
            row = s.scalars(
                select(_Version).where(
                    _Version.name == name,
                    _Version.checkpoint_sha256 == checkpoint_sha256,
                    _Version.spec_sha256 == spec_sha256,
                    _Version.serving_sha256 == serving_digest(serving),
                )
            ).first()
            return _record(row) if row else None

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
        """Delete a version row. The service refuses first while an alias points at it; an alias set
        in the meantime (by another replica) goes with the version, as a recorded move."""
        with self._session() as s:
            self._lock(s, name)
            row = s.scalars(
                select(_Version).where(_Version.name == name, _Version.version == version)
            ).first()
            if row is None:
                return None
            record = _record(row)
            self._drop_aliases(s, name, f"deleting v{version}", version)
            s.delete(row)
            return record

    def drop_aliases(self, name: str, who: str) -> None:
        """Remove every alias of ``name`` (recorded as moves by ``who``): the start of a model's deletion."""
        with self._session() as s:
            self._lock(s, name)
            self._drop_aliases(s, name, who)

    @staticmethod
    def _lock(s: Session, name: str) -> None:
        """Hold ``name``'s ``models`` row for this transaction: alias writes and deletes of one model
        take turns (a row lock on PostgreSQL, the write lock on SQLite)."""
        locked: CursorResult[Any] = s.execute(  # type: ignore[assignment]
            update(_Model).where(_Model.name == name).values(last_version=_Model.last_version)
        )
        if locked.rowcount == 0:  # a database from before `models`
            latest = s.scalar(select(func.max(_Version.version)).where(_Version.name == name))
            if latest is not None:
                s.add(_Model(name=name, last_version=latest))
                s.flush()

    @staticmethod
    def _drop_aliases(s: Session, name: str, who: str, version: int | None = None) -> None:
        """Remove ``name``'s aliases (those pointing at ``version`` only, when given), recording it."""
        query = select(_Alias).where(_Alias.name == name)
        for row in s.scalars(query if version is None else query.where(_Alias.version == version)):
            s.add(
                _AliasMove(
                    name=name, alias=row.alias, from_version=row.version, moved_by=who, moved_at=_now()
                )
            )
            s.delete(row)

    def set_alias(
        self, name: str, alias: str, version: int, who: str
    ) -> tuple[AliasRecord, int | None] | None:
        """Point ``alias`` at ``version``: ``(the alias, the version it pointed at before)``, or None
        when there is no such version. Setting it to where it points already changes nothing."""
        with self._session() as s:
            self._lock(s, name)
            exists = s.scalar(select(func.count()).where(_Version.name == name, _Version.version == version))
            if not exists:
                return None
            row = s.get(_Alias, (name, alias))
            previous = row.version if row is not None else None
            if row is not None and row.version == version:
                return _alias_record(row), previous
            if row is None:
                row = _Alias(name=name, alias=alias)
                s.add(row)
            row.version, row.moved_by, row.moved_at = version, who, _now()
            s.add(_AliasMove(name=name, alias=alias, from_version=previous, to_version=version,
                             moved_by=who, moved_at=row.moved_at))  # fmt: skip
            s.flush()
            return _alias_record(row), previous

    def delete_alias(self, name: str, alias: str, who: str) -> AliasRecord | None:
        with self._session() as s:
            self._lock(s, name)
            row = s.get(_Alias, (name, alias))
            if row is None:
                return None
            record = _alias_record(row)
            s.add(_AliasMove(name=name, alias=alias, from_version=row.version, moved_by=who, moved_at=_now()))
            s.delete(row)
            return record

    def aliases(self, name: str | None = None) -> dict[str, dict[str, AliasRecord]]:
        """``{model: {alias: record}}``, of one model or of all."""
        with self._session() as s:
            query = select(_Alias).order_by(_Alias.name, _Alias.alias)
            grouped: dict[str, dict[str, AliasRecord]] = {}
            for row in s.scalars(query if name is None else query.where(_Alias.name == name)):
                grouped.setdefault(row.name, {})[row.alias] = _alias_record(row)
            return grouped

    def alias_version(self, name: str, alias: str) -> int | None:
        with self._session() as s:
            row = s.get(_Alias, (name, alias))
            return row.version if row is not None else None

    def alias_history(self, name: str, alias: str) -> list[AliasMove]:
        """Every move of the alias, oldest first (kept after the alias or the model is deleted)."""
        with self._session() as s:
            query = select(_AliasMove).where(_AliasMove.name == name, _AliasMove.alias == alias)
            return [
                AliasMove(row.alias, row.from_version, row.to_version, row.moved_by, _utc(row.moved_at))
                for row in s.scalars(query.order_by(_AliasMove.id))
            ]

    def digest_in_use(self, digest: str) -> bool:
        with self._session() as s:
            return (s.scalar(select(func.count()).where(_Version.digest == digest)) or 0) > 0

    def create_job(self, job_id: str, name: str, request: dict[str, Any]) -> JobRecord:
        """Queue a job whose inputs are stored already: any replica may claim it from now on."""
        with self._session() as s:
            now = _now()
            job = _Job(id=job_id, name=name, status="queued", request=request, created_at=now, updated_at=now)
            s.add(job)
            s.flush()
            return _job_record(job)

    @staticmethod
    def _claimable(cutoff: dt.datetime, max_attempts: int) -> ColumnElement[bool]:
        """Queued, or running under a lease that ran out (its replica stopped) with attempts left."""
        expired = and_(_Job.status == "running", _Job.heartbeat_at < cutoff, _Job.attempts < max_attempts)
        return or_(_Job.status == "queued", expired)

    def claim_job(self, owner: str, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest claimable job for ``owner``, or None. Compare-and-set: of replicas
        claiming one job at once, exactly one UPDATE matches (the others find it changed)."""
        now = _now()
        claimable = self._claimable(now - dt.timedelta(seconds=lease_s), max_attempts)
        with self._session() as s:
            candidates = list(s.scalars(select(_Job.id).where(claimable).order_by(_Job.created_at).limit(8)))
        for job_id in candidates:
            with self._session() as s:
                claimed: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                    _update_jobs()
                    .where(_Job.id == job_id, claimable)
                    .values(
                        status="running",
                        owner=owner,
                        heartbeat_at=now,
                        attempts=_Job.attempts + 1,
                        stage=None,
                        stages={},
                        result=None,
                        updated_at=now,
                    )
                )
                if claimed.rowcount == 1:
                    row = s.get(_Job, job_id, populate_existing=True)
                    assert row is not None
                    return _job_record(row)
        return None

    @staticmethod
    def _held(job: JobRecord) -> ColumnElement[bool]:
        """The job is still running under the claim ``job`` records (not reclaimed since)."""
        return and_(
            _Job.id == job.id,
            _Job.status == "running",
            _Job.owner == job.owner,
            _Job.attempts == job.attempts,
        )

    def heartbeat(self, job: JobRecord) -> bool:
        """Renew the claim's lease; False when it was lost (another replica claimed the job)."""
        with self._session() as s:
            renewed: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                _update_jobs().where(self._held(job)).values(heartbeat_at=_now())
            )
            return renewed.rowcount == 1

    def set_job_stage(self, job: JobRecord, stage: str) -> bool:
        """``stage`` has started: the one before it (if any) is finished, its seconds recorded.
        False (nothing written) when the claim was lost."""
        with self._session() as s:
            row = s.get(_Job, job.id)
            if row is None:
                return False
            now = _now()
            written: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                _update_jobs()
                .where(self._held(job))
                .values(stage=stage, stages=_stages_ended(row, now), updated_at=now)
            )
            return written.rowcount == 1

    def finish_job(self, job: JobRecord, status: JobState, result: dict[str, Any]) -> bool:
        """Record the claim's outcome (``succeeded`` or ``failed``); False (nothing written) when the
        claim was lost: a replica that stopped heartbeating never overwrites its successor."""
        with self._session() as s:
            row = s.get(_Job, job.id)
            if row is None:
                return False
            now = _now()
            stage = None if status == "succeeded" else row.stage  # a failure keeps where
            values = {
                "status": status,
                "result": result,
                "stage": stage,
                "stages": _stages_ended(row, now),
                "updated_at": now,
            }
            written: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                _update_jobs().where(self._held(job)).values(**values)
            )
            return written.rowcount == 1

    def release_job(self, job: JobRecord) -> bool:
        """Queue the claim's job again, that attempt not counted (this replica stops, gracefully)."""
        with self._session() as s:
            released: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                _update_jobs()
                .where(self._held(job))
                .values(
                    status="queued",
                    owner=None,
                    heartbeat_at=None,
                    attempts=_Job.attempts - 1,
                    updated_at=_now(),
                )
            )
            return released.rowcount == 1

    def fail_abandoned_jobs(self, lease_s: float, max_attempts: int) -> list[JobRecord]:
        """Fail the running jobs whose lease ran out with no attempt left (503: their replica
        stopped that many times); returns them, failed."""
        now = _now()
        abandoned = and_(
            _Job.status == "running",
            _Job.heartbeat_at < now - dt.timedelta(seconds=lease_s),
            _Job.attempts >= max_attempts,
        )
        failed = []
        with self._session() as s:
            for row in list(s.scalars(select(_Job).where(abandoned))):
                times = "once" if row.attempts == 1 else f"{row.attempts} times"
                result = {
                    "status": 503,
                    "detail": f"the replica running this conversion stopped, {times} (last {row.owner}): "
                    "post it again",
                }
                written: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                    _update_jobs()
                    .where(_Job.id == row.id, abandoned)
                    .values(status="failed", result=result, updated_at=now)
                )
                if written.rowcount == 1:
                    failed.append(
                        dataclasses.replace(_job_record(row), status="failed", result=result, updated_at=now)
                    )
        return failed

    def unfinished_jobs(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` that are queued or running."""
        with self._session() as s:
            query = select(_Job.id).where(_Job.id.in_(job_ids), _Job.status.in_(("queued", "running")))
            return set(s.scalars(query))

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._session() as s:
            job = s.get(_Job, job_id)
            if job is None:
                return None
            return _job_record(job)
