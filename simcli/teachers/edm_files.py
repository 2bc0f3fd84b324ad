"""The official EDM teachers as files: the mirror switch, where a teacher's .pkl lives in the cache, its download.

Environment:
    SIMCLI_EDM_MIRROR   replaces https://nvlabs-fi-cdn.nvidia.com/edm/ in catalog URLs (http(s):// or file://)

Teachers land in <cache>/edm/pretrained/ (their FID statistics, in <cache>/edm/fid-refs/, are
simcli.eval.references'). The entries are edm_catalog.py's; the cache and the downloading are simcli.store's.
"""

from __future__ import annotations

import os
from pathlib import Path

from simcli.store.cache import cache_dir
from simcli.store.download import DEFAULT_TIMEOUT_S, DownloadProgressFn, ensure_file
from simcli.teachers.edm_catalog import EDM_ROOT_URL, EdmTeacher, FidReference, get_edm_teacher

MIRROR_ENV = "SIMCLI_EDM_MIRROR"


def mirrored_url(url: str) -> str:
    """`url` with the official EDM root replaced by $SIMCLI_EDM_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and url.startswith(EDM_ROOT_URL):
        return mirror.rstrip("/") + "/" + url[len(EDM_ROOT_URL) :]
    return url


def teacher_path(name_or_entry: str | EdmTeacher) -> Path:
    """Where a teacher's .pkl lives in the cache (and where to copy it by hand)."""
    entry = get_edm_teacher(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    return cache_dir() / "edm" / "pretrained" / entry.file_name


def ensure_teacher_file(
    name_or_entry: str | EdmTeacher,
    *,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check_sha256: bool = False,
) -> Path:
    """Path of an official EDM teacher .pkl in the cache, downloading it (or its mirror copy) when needed."""
    entry = get_edm_teacher(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    return ensure_catalog_file(entry, teacher_path(entry), on_progress=on_progress, timeout_s=timeout_s,
                               check_sha256=check_sha256)


def ensure_catalog_file(
    entry: EdmTeacher | FidReference,
    dest: Path,
    *,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check_sha256: bool = False,
) -> Path:
    """An official EDM file (a teacher or FID statistics) at dest in the cache, downloaded from its URL (or the
    mirror's) and checked against the catalog's size when it is not there yet."""
    return ensure_file(
        mirrored_url(entry.url),
        dest,
        expected_size=entry.approx_size_bytes,
        size_tolerance=entry.size_tolerance,
        on_progress=on_progress,
        timeout_s=timeout_s,
        check_sha256=check_sha256,
    )
