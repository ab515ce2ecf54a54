"""The input files of queued conversion jobs (checkpoint, reference, calibration inputs), kept where
every replica can read them: a job row is inserted only after its inputs are stored, so whichever
replica claims a job finds them.

Locally under ``<artifacts root>/jobs/<job_id>/`` (the upload folder renamed into place, whole or
not at all); with ``REPARAM_ARTIFACTS_URL`` under ``<prefix>/jobs/<job_id>/`` in the bucket, with the
marker object ``COMPLETE`` written last (no marker: not stored, as for artifact folders). The
replica that claims a job fetches them into a work folder of its own (``fetch``); they are deleted
once the job has ended for good. Inputs no job row names (a process stopped between storing them
and queueing the job) are found by age (``older_than``) and swept by the job runner.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from .artifacts import ArtifactStore

MARKER = "COMPLETE"  # written after every input, as in an artifact folder (``s3``)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobInputs(Protocol):
    def put(self, job_id: str, folder: Path) -> None:
        """Store the files of ``folder`` as the job's inputs (moved, or copied: the caller removes
        what is left of ``folder``)."""

    def fetch(self, job_id: str, into: Path) -> None:
        """The job's input files into the new folder ``into``; FileNotFoundError when not stored."""

    def delete(self, job_id: str) -> None: ...

    def older_than(self, seconds: float) -> list[str]:
        """The jobs whose inputs were stored (or begun) more than ``seconds`` ago."""


def _checked(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


class LocalJobInputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, job_id: str, folder: Path) -> None:
        os.replace(folder, self.root / _checked(job_id))  # the upload folder is on the same file system

    def fetch(self, job_id: str, into: Path) -> None:
        stored = self.root / _checked(job_id)
        if not stored.is_dir():
            raise FileNotFoundError(f"the inputs of job {job_id} are gone from {self.root}")
        into.mkdir()
        for path in stored.iterdir():
            try:
                os.link(path, into / path.name)  # inputs are never written again: share them
            except OSError:
                shutil.copy2(path, into / path.name)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.root / _checked(job_id), ignore_errors=True)

    def older_than(self, seconds: float) -> list[str]:
        cutoff = time.time() - seconds
        return [p.name for p in self.root.iterdir() if JOB_ID.match(p.name) and p.stat().st_mtime < cutoff]


class S3JobInputs:
    """In the artifacts' bucket, through the :class:`~service.store.s3.S3ArtifactStore`'s client."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket = client, bucket
        self.folder = "/".join(filter(None, [prefix, "jobs"])) + "/"

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item for page in pages for item in page.get("Contents", [])]

    def put(self, job_id: str, folder: Path) -> None:
        prefix = self.folder + _checked(job_id) + "/"
        names = sorted(path.name for path in folder.iterdir())
        for name in names:
            self.client.upload_file(str(folder / name), self.bucket, prefix + name)
        self.client.put_object(Bucket=self.bucket, Key=prefix + MARKER, Body=" ".join(names).encode())

    def fetch(self, job_id: str, into: Path) -> None:
        prefix = self.folder + _checked(job_id) + "/"
        names = {item["Key"][len(prefix) :] for item in self._objects(prefix)}
        if MARKER not in names:
            raise FileNotFoundError(f"the inputs of job {job_id} are gone from s3://{self.bucket}/{prefix}")
        into.mkdir()
        for name in names - {MARKER}:
            self.client.download_file(self.bucket, prefix + name, str(into / name))

    def delete(self, job_id: str) -> None:
        """The marker first: a half-deleted folder is not stored."""
        prefix = self.folder + _checked(job_id) + "/"
        self.client.delete_object(Bucket=self.bucket, Key=prefix + MARKER)
        keys = [{"Key": item["Key"]} for item in self._objects(prefix)]
        if keys:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def older_than(self, seconds: float) -> list[str]:
        newest: dict[str, float] = {}
        for item in self._objects(self.folder):
            job_id = item["Key"][len(self.folder) :].split("/", 1)[0]
            newest[job_id] = max(newest.get(job_id, 0.0), item["LastModified"].timestamp())
        cutoff = time.time() - seconds
        return [job_id for job_id, moment in newest.items() if JOB_ID.match(job_id) and moment < cutoff]


def job_inputs_from_settings(settings: Settings, artifacts: ArtifactStore) -> JobInputs:
    """Next to the artifacts: in their bucket, or under their folder."""
    if settings.artifacts_url is not None:
        from .s3 import S3ArtifactStore

        assert isinstance(artifacts, S3ArtifactStore)
        return S3JobInputs(artifacts.client, artifacts.bucket, artifacts.prefix)
    return LocalJobInputs(settings.resolved_artifacts_dir / "jobs")
