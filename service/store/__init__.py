"""Persistence: version metadata (SQLAlchemy) and artifacts (content-addressed folders)."""

from .artifacts import ArtifactStore, LocalArtifactStore, artifact_store_from_settings
from .metadata import JobRecord, MetadataStore, VersionRecord
from .version_cache import VersionCache

__all__ = [
    "ArtifactStore",
    "JobRecord",
    "LocalArtifactStore",
    "MetadataStore",
    "VersionCache",
    "VersionRecord",
    "artifact_store_from_settings",
]
