"""Persistence: version metadata (SQLAlchemy) and artifacts (content-addressed folders)."""

from .artifacts import ArtifactStore, LocalArtifactStore, artifact_store_from_settings
from .metadata import JobRecord, MetadataStore, VersionRecord

__all__ = [
    "ArtifactStore",
    "JobRecord",
    "LocalArtifactStore",
    "MetadataStore",
    "VersionRecord",
    "artifact_store_from_settings",
]
