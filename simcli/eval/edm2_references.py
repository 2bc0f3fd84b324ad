"""EDM2's published dataset reference statistics (NVlabs/edm2, https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/):
their names, URLs, cache paths and download. Reading them safely is simcli.eval.edm2_stats_pickle's business.

Each file is calculate_metrics.py's `save_stats`: pickle.dump of a plain dict {'num_images': int, 'fid': {'mu',
'sigma'}, 'fd_dinov2': {'mu', 'sigma'}} of float64 numpy arrays, mu [2048] and sigma [2048, 2048] for 'fid' (NVIDIA's
Inception port, as EDM's fid-refs), mu [1024] and sigma [1024, 1024] for 'fd_dinov2' (dinov2_vitl14, 'torch' resize).

Files land in <cache>/edm2/dataset-refs/<file>, downloaded through simcli.teachers.edm_files.mirrored_url (so a
mirror of the EDM2 root, where that function has one, serves them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simcli.errors import UsageError
from simcli.eval.edm2_stats_pickle import read_edm2_stats
from simcli.eval.stats import FeatureStats
from simcli.store.cache import cache_dir
from simcli.store.download import DEFAULT_TIMEOUT_S, DownloadProgressFn, ensure_file
from simcli.teachers.edm_files import mirrored_url

EDM2_REFS_BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/"
# pickle.dump (protocol 4, Python 3.8-3.13's default) of that dict with float64 arrays is 41,967,959 bytes here:
# 41,967,616 bytes of array data plus ~350 bytes of pickle opcodes (protocol 5: 48 bytes less). Inferred from
# EDM2's code, not checked against the CDN files, which cannot be fetched here.
EDM2_REF_APPROX_BYTES = 41_967_959
EDM2_REF_SIZE_TOLERANCE = 65_536


@dataclass(frozen=True)
class Edm2Reference:
    """One of EDM2's reference statistics files, addressed by its simcli name."""

    name: str
    file_name: str
    description: str
    approx_size_bytes: int = EDM2_REF_APPROX_BYTES
    size_tolerance: int = EDM2_REF_SIZE_TOLERANCE

    @property
    def url(self) -> str:
        return EDM2_REFS_BASE_URL + self.file_name


EDM2_REFERENCES: dict[str, Edm2Reference] = {
    r.name: r
    for r in (
        Edm2Reference("img512", "img512.pkl", "EDM2 ImageNet 512x512 training set (FID and FD-DINOv2 statistics)"),
        Edm2Reference("img64", "img64.pkl", "EDM2 ImageNet 64x64 training set (FID and FD-DINOv2 statistics)"),
    )
}


def is_edm2_reference_name(name: str) -> bool:
    """A catalog name (img512, img64) or its file name (img512.pkl)."""
    return name in EDM2_REFERENCES or any(name == r.file_name for r in EDM2_REFERENCES.values())


def get_edm2_reference(name: str) -> Edm2Reference:
    """Look an entry up by name or file name; unknown names are a UsageError."""
    for entry in EDM2_REFERENCES.values():
        if name in (entry.name, entry.file_name):
            return entry
    raise UsageError(f"unknown EDM2 reference '{name}'", hint=f"known: {', '.join(EDM2_REFERENCES)}")


def edm2_reference_path(name_or_entry: str | Edm2Reference) -> Path:
    """Where the file lives in the cache (and where to copy it by hand)."""
    entry = get_edm2_reference(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    return cache_dir() / "edm2" / "dataset-refs" / entry.file_name


def ensure_edm2_reference_file(
    name_or_entry: str | Edm2Reference,
    *,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """The file in the cache, downloaded (size-checked) when missing; offline, a UsageError naming URL and path."""
    entry = get_edm2_reference(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    return ensure_file(mirrored_url(entry.url), edm2_reference_path(entry), expected_size=entry.approx_size_bytes,
                       size_tolerance=entry.size_tolerance, on_progress=on_progress, timeout_s=timeout_s)


def is_edm2_reference(ref: str) -> bool:
    """--ref names EDM2 statistics: a catalog name or file name, or any .pkl path (read in EDM2's layout)."""
    return is_edm2_reference_name(ref) or ref.lower().endswith(".pkl")


def edm2_reference_stats(ref: str, metric: str, *, on_download: DownloadProgressFn | None = None) -> FeatureStats:
    """The `metric` entry ('fid' or 'fd_dinov2') of a local EDM2 .pkl or of a catalog file (downloaded when
    missing), as FeatureStats; their extractor is not recorded in the file, so it is None (callers add a note)."""
    path = Path(ref)
    if path.is_file():
        source = str(path)
    elif is_edm2_reference_name(ref):
        entry = get_edm2_reference(ref)
        path = ensure_edm2_reference_file(entry, on_progress=on_download)
        source = f"EDM2 reference '{entry.name}' ({entry.description}), {path}"
    else:
        raise UsageError(f"reference statistics not found: {path}")
    stats = read_edm2_stats(path)
    if metric not in stats.entries:
        raise UsageError(f"{path} has no '{metric}' statistics (it has: {', '.join(stats.entries)})",
                         hint="use EDM2 statistics made for this metric")
    mu, sigma = stats.entries[metric]
    return FeatureStats(mu, sigma, stats.num_images, source=source)
