"""Artifacts in S3-compatible storage (``REPARAM_ARTIFACTS_URL=s3://bucket/prefix``), served from a
local cache folder (TorchServe's model folders and the downloads need files on disk).

Layout: ``<prefix>/sha256/<d[:2]>/<digest>/{model.safetensors, deploy_spec.json, report.json,
model.onnx, model.int8.onnx, model.pt2}`` plus ``COMPLETE``, the marker object, written after every
file of the conversion. A folder without the marker does not exist for a reader (an upload under way, or one a
killed process left), so no reader sees a version's files partly; files added later (``model.onnx``
and ``model.pt2``, exported after registration) are single objects, each whole or absent. Deleting
removes the marker first. Endpoint, region and credentials are boto3's: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles and roles.

The cache (``REPARAM_ARTIFACTS_DIR``) is a :class:`LocalArtifactStore`: ``local_path`` lists the
folder in the bucket (one request) and fetches what the cache lacks (the weights checked against
their digest), or drops the cached copy when the bucket no longer has the folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from reparam_core import ConversionResult
from reparam_core.deploy import WEIGHTS, sha256_file

from .artifacts import FILES, LocalArtifactStore

MARKER = "COMPLETE"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (the prefix may be empty)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class S3ArtifactStore:
    def __init__(self, url: str, cache: Path) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.cache = LocalArtifactStore(cache)
        self.client: Any = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            endpoint = self.client.meta.endpoint_url
            raise RuntimeError(f"S3 bucket {self.bucket!r} at {endpoint} cannot be used: {exc}") from exc

    def _folder(self, digest: str) -> str:
        self.cache.local_path(digest)  # refuses anything but a sha256 digest
        return "/".join(filter(None, [self.prefix, "sha256", digest[:2], digest])) + "/"

    def _stored(self, digest: str) -> set[str] | None:
        """The names in the digest's folder in the bucket, or None without the marker (absent)."""
        folder, names = self._folder(digest), set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            names |= {item["Key"][len(folder) :] for item in page.get("Contents", [])}
        return names - {MARKER} if MARKER in names else None

    def local_path(self, digest: str) -> Path:
        """The cached folder, brought in step with the bucket: fetched whole when new (the weights
        checked against ``digest``), files added since fetched one by one; absent when the bucket
        has no complete folder."""
        local = self.cache.local_path(digest)
        stored = self._stored(digest)
        if stored is None:
            self.cache.delete(digest)
            return local
        wanted = [name for name in FILES if name in stored]
        if not local.is_dir():
            staging = Path(tempfile.mkdtemp(dir=self.cache.root / "tmp"))
            try:
                for name in wanted:
                    self._fetch(digest, name, staging / name)
                if sha256_file(staging / WEIGHTS) != digest:
                    where = f"s3://{self.bucket}/{self._folder(digest)}"
                    raise RuntimeError(f"{WEIGHTS} in {where} does not have the digest {digest}")
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staging, local)
                except OSError:  # another thread cached it first
                    if not local.is_dir():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        for name in wanted:
            if not (local / name).exists():
                self.cache.add(digest, name, functools.partial(self._fetch, digest, name))
        return local

    def _fetch(self, digest: str, name: str, path: Path) -> None:
        self.client.download_file(self.bucket, self._folder(digest) + name, str(path))
        path.chmod(0o644)

    def put(self, result: ConversionResult, export: bool = True) -> str:
        """Written to the cache first (that gives the digest), then every file the bucket lacks,
        then the marker: the folder exists for readers once all its files are there."""
        digest = self.cache.put(result, export)
        local = self.cache.local_path(digest)
        stored = self._stored(digest)
        present = set() if stored is None else stored
        folder = self._folder(digest)
        for name in FILES:
            if (local / name).exists() and name not in present:
                self.client.upload_file(str(local / name), self.bucket, folder + name)
        if stored is None:
            files = sorted(name for name in FILES if (local / name).exists())
            body = json.dumps({"digest": digest, "files": files}).encode()
            self.client.put_object(Bucket=self.bucket, Key=folder + MARKER, Body=body)
        return digest

    def add(self, digest: str, filename: str, write: Callable[[Path], object]) -> bool:
        """One more file: written to a cache staging file, uploaded (one object, whole or absent),
        then renamed into the cached folder. False when the folder is gone (deleted)."""
        if not self.local_path(digest).is_dir():
            return False
        key = self._folder(digest) + filename

        def write_and_upload(path: Path) -> None:
            write(path)
            self.client.upload_file(str(path), self.bucket, key)

        if not self.cache.add(digest, filename, write_and_upload):
            return False
        if self._stored(digest) is None:  # deleted while this file was written: take it back
            self.client.delete_object(Bucket=self.bucket, Key=key)
            self.cache.delete(digest)
            return False
        return True

    def delete(self, digest: str) -> None:
        """The marker first (readers see the folder gone at once), then its files, then the cache."""
        folder = self._folder(digest)
        self.client.delete_object(Bucket=self.bucket, Key=folder + MARKER)
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        self.cache.delete(digest)

    def clean_staging(self) -> int:
        return self.cache.clean_staging()
