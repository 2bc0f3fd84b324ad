"""The EDM FID reference statistics (edm_catalog.FID_REFERENCES) as files: where they live in the cache
(<cache>/edm/fid-refs/) and their download, from $SIMCLI_EDM_MIRROR when that is set (simcli.teachers.edm_files).
"""

from __future__ import annotations

from pathlib import Path

from simcli.store.cache import cache_dir
from simcli.store.download import DEFAULT_TIMEOUT_S, DownloadProgressFn
from simcli.teachers.edm_catalog import FidReference, get_fid_reference
from simcli.teachers.edm_files import ensure_catalog_file


def fid_reference_path(name_or_ref: str | FidReference) -> Path:
    """Where FID reference statistics live in the cache."""
    ref = get_fid_reference(name_or_ref) if isinstance(name_or_ref, str) else name_or_ref
    return cache_dir() / "edm" / "fid-refs" / ref.file_name


def ensure_fid_reference_file(
    name_or_ref: str | FidReference,
    *,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check_sha256: bool = False,
) -> Path:
    """Path of EDM FID reference statistics (.npz) in the cache, downloading them when needed."""
    ref = get_fid_reference(name_or_ref) if isinstance(name_or_ref, str) else name_or_ref
    return ensure_catalog_file(ref, fid_reference_path(ref), on_progress=on_progress, timeout_s=timeout_s,
                               check_sha256=check_sha256)
