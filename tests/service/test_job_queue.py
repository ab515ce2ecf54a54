"""The conversion job queue on the database, on SQLite and on PostgreSQL: replicas claiming at once
take each job once, a lease that ran out is claimed again while attempts are left and then the job
fails cleanly, and a replica whose claim was taken over can no longer write to the job."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from service.store import MetadataStore
from service.store.metadata import JobRecord, _Job
from tests.service.test_metadata_store import together

pytestmark = pytest.mark.databases
LEASE_S, ATTEMPTS = 30.0, 2


def queue(store: MetadataStore, count: int = 1) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    for job_id in ids:
        store.create_job(job_id, "m", {"name": "m"})
    return ids


def expire(store: MetadataStore, job: JobRecord) -> None:
    """The claim's replica stopped heartbeating a lease ago."""
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LEASE_S + 1)
    with store.engine.begin() as connection:
        connection.execute(sa.update(_Job).where(_Job.id == job.id).values(heartbeat_at=stale))


def claim(store: MetadataStore, owner: str) -> JobRecord | None:
    return store.claim_job(owner, LEASE_S, ATTEMPTS)


def test_replicas_claiming_at_once_take_each_job_once(database_url: str) -> None:
    ids = queue(MetadataStore(database_url), 12)
    replicas = [MetadataStore(database_url) for _ in range(6)]  # engines of their own, as processes

    def drain(i: int) -> list[str]:
        taken = []
        while (job := claim(replicas[i], f"replica-{i}")) is not None:
            assert job.owner == f"replica-{i}" and job.status == "running" and job.attempts == 1
            taken.append(job.id)
        return taken

    results = together(drain, len(replicas))
    assert all(isinstance(r, list) for r in results), results
    claimed = [job_id for taken in results for job_id in taken]
    assert sorted(claimed) == sorted(ids)  # every job, none twice
    assert claim(replicas[0], "late") is None


def test_an_expired_lease_is_claimed_again_and_the_stale_owner_cannot_write(database_url: str) -> None:
    store = MetadataStore(database_url)
    (job_id,) = queue(store)
    first = claim(store, "a")
    assert first is not None and first.id == job_id and first.heartbeat_at is not None
    assert store.set_job_stage(first, "read")
    assert claim(store, "b") is None  # its lease holds
    assert store.heartbeat(first)
    expire(store, first)
    second = claim(store, "b")
    assert second is not None and second.id == job_id and second.owner == "b" and second.attempts == 2
    assert second.stage is None and second.stages == {}  # the attempt starts over
    assert not store.heartbeat(first)
    assert not store.set_job_stage(first, "fuse")
    assert not store.finish_job(first, "succeeded", {"version": 7})
    assert not store.release_job(first)
    assert store.set_job_stage(second, "read") and store.finish_job(second, "succeeded", {"version": 1})
    done = store.get_job(job_id)
    assert done is not None and done.status == "succeeded" and done.result == {"version": 1}
    assert done.owner == "b" and done.attempts == 2 and list(done.stages) == ["read"] and done.stage is None
    assert store.unfinished_jobs([job_id]) == set()


def test_out_of_attempts_a_job_fails_cleanly(database_url: str) -> None:
    store = MetadataStore(database_url)
    (job_id,) = queue(store)
    for owner in ("a", "b"):
        job = claim(store, owner)
        assert job is not None
        expire(store, job)
    assert store.fail_abandoned_jobs(LEASE_S, ATTEMPTS + 1) == []  # one more attempt allowed: not yet
    assert claim(store, "c") is None  # both attempts spent
    (failed,) = store.fail_abandoned_jobs(LEASE_S, ATTEMPTS)
    assert failed.id == job_id and failed.status == "failed"
    assert failed.result == {
        "status": 503,
        "detail": "the replica running this conversion stopped, 2 times (last b): post it again",
    }
    assert store.get_job(job_id) == failed
    assert not store.finish_job(job, "succeeded", {"version": 1})  # b comes back too late
    assert store.fail_abandoned_jobs(LEASE_S, ATTEMPTS) == [] and claim(store, "c") is None


def test_a_released_job_is_queued_again_that_attempt_not_counted(database_url: str) -> None:
    store = MetadataStore(database_url)
    (job_id,) = queue(store)
    job = claim(store, "a")
    assert job is not None and store.release_job(job)
    queued = store.get_job(job_id)
    assert queued is not None and queued.status == "queued" and queued.owner is None and queued.attempts == 0
    assert store.unfinished_jobs([job_id, "0" * 32]) == {job_id}
    again = claim(store, "b")
    assert again is not None and again.attempts == 1


def test_jobs_record_their_stages_and_a_failure_keeps_where(database_url: str) -> None:
    store = MetadataStore(database_url)
    done_id, failed_id = queue(store, 2)
    done, failed = claim(store, "a"), claim(store, "a")
    assert done is not None and failed is not None and {done.id, failed.id} == {done_id, failed_id}
    for stage in ("read", "fuse", "validate"):
        store.set_job_stage(done, stage)
    store.finish_job(done, "succeeded", {"version": 1})
    finished = store.get_job(done.id)
    assert finished is not None and finished.status == "succeeded" and finished.stage is None
    assert list(finished.stages) == ["read", "fuse", "validate"] and finished.request == {"name": "m"}
    assert finished.updated_at >= finished.created_at and finished.created_at.tzinfo is not None
    store.set_job_stage(failed, "read")
    store.finish_job(failed, "failed", {"status": 400, "detail": "truncated"})
    stopped = store.get_job(failed.id)
    assert stopped is not None and stopped.stage == "read" and list(stopped.stages) == ["read"]
    assert store.get_job("0" * 32) is None
