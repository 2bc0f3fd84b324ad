"""The official EDM teachers as files: the mirror switch, where a teacher's .pkl lives in the cache, its download.

Environment:
    SIMCLI_EDM_MIRROR    replaces https://nvlabs-fi-cdn.nvidia.com/edm/ in catalog URLs (http(s):// or file://)
    SIMCLI_EDM2_MIRROR   replaces https://nvlabs-fi-cdn.nvidia.com/edm2/ likewise

Teachers land in <cache>/edm/pretrained/ and <cache>/edm2/posthoc-reconstructions/ (their reference statistics
are simcli.eval.references'). The entries are edm_catalog.py's and edm2_catalog.py's; the cache and the downloading
are simcli.store's.
"""

from __future__ import annotations

import os
from pathlib import Path

from simcli.store.cache import cache_dir
from simcli.store.download import DEFAULT_TIMEOUT_S, DownloadProgressFn, ensure_file
from simcli.teachers.edm2_catalog import EDM2_ROOT_URL, Edm2Network, get_edm2_network, is_edm2_name
from simcli.teachers.edm_catalog import EDM_ROOT_URL, EdmTeacher, FidReference, get_edm_teacher

MIRROR_ENV = "SIMCLI_EDM_MIRROR"
MIRROR2_ENV = "SIMCLI_EDM2_MIRROR"


def mirrored_url(url: str) -> str:
    """`url` with the official EDM (EDM2) root replaced by $SIMCLI_EDM_MIRROR ($SIMCLI_EDM2_MIRROR) when set."""
    for root, variable in ((EDM_ROOT_URL, MIRROR_ENV), (EDM2_ROOT_URL, MIRROR2_ENV)):
        mirror = os.environ.get(variable, "").strip()
        if mirror and url.startswith(root):
            return mirror.rstrip("/") + "/" + url[len(root) :]
    return url


def teacher_path(name_or_entry: str | EdmTeacher | Edm2Network) -> Path:
    """Where a teacher's .pkl lives in the cache (and where to copy it by hand)."""
    entry = _entry(name_or_entry)
    if isinstance(entry, Edm2Network):
        return cache_dir() / "edm2" / "posthoc-reconstructions" / entry.file_name
    return cache_dir() / "edm" / "pretrained" / entry.file_name


def _entry(name_or_entry: str | EdmTeacher | Edm2Network) -> EdmTeacher | Edm2Network:
    if not isinstance(name_or_entry, str):
        return name_or_entry
    if is_edm2_name(name_or_entry):
        return get_edm2_network(name_or_entry)
    return get_edm_teacher(name_or_entry)


def ensure_teacher_file(
    name_or_entry: str | EdmTeacher | Edm2Network,
    *,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check_sha256: bool = False,
) -> Path:
    """Path of an official EDM or EDM2 network .pkl in the cache, downloading it (or its mirror copy) when needed."""
    entry = _entry(name_or_entry)
    return ensure_catalog_file(entry, teacher_path(entry), on_progress=on_progress, timeout_s=timeout_s,
                               check_sha256=check_sha256)


def ensure_catalog_file(
    entry: EdmTeacher | Edm2Network | FidReference,
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
