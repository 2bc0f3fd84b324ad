"""A restricted reader for EDM2's feature-statistics pickles (calculate_metrics.py `save_stats`): it never runs code.

The file is pickle.dump of a plain dict {'num_images': int, <metric>: {'mu': ndarray, 'sigma': ndarray}, ...} (no
dnnlib.EasyDict: EDM2 builds the stats with dict()). Numpy pickles each array as
numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') + BUILD((1, shape, dtype, fortran, raw bytes))
(protocols 2-4; numpy._core with numpy >= 2) or numpy.core.numeric._frombuffer(bytes, dtype, shape, order)
(protocol 5), with the dtype as numpy.dtype('f8', False, True) + BUILD(state). Those globals are the only ones
allowed, and each maps to an inert stand-in of simcli.teachers.edm_unpickler (the EDM network unpickler's numpy
pieces) that builds the array from the raw bytes with np.frombuffer; numpy's own functions are never called with
the file's arguments. Any other global is refused before anything is called, naming it. Arrays must be float32 or
float64; every metric entry must be mu [D] and sigma [D, D], finite and symmetric.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import UsageError
from simcli.teachers.edm_unpickler import (
    _NDARRAY,
    _array_from_buffer,
    _ArrayRecord,
    _DTypeRecord,
    _reconstruct_array,
    _StandIn,
)

HINT = "expected EDM2 reference statistics: a pickled dict of metric -> {'mu', 'sigma'} float arrays (e.g. img512.pkl)"
SYMMETRY_RTOL = 1e-6  # |sigma - sigma^T| allowed, relative to max |sigma| (as simcli.eval.stats.load_stats)

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,  # written with numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,  # written with numpy >= 2
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy", "dtype"): lambda spec, align=False, copy=False: _DTypeRecord(spec),
    ("numpy", "ndarray"): _NDARRAY,
}


@dataclass(frozen=True)
class Edm2Stats:
    """The content of an EDM2 statistics pickle: float64 (mu, sigma) per metric, and the image count if given."""

    entries: dict[str, tuple[np.ndarray, np.ndarray]]
    num_images: int | None


class _RefusedGlobal(Exception):
    """A global outside the allow-list; the message is its module.name."""


class _StatsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise _RefusedGlobal(f"{module}.{name}")
        if target is _NDARRAY:
            return _NDARRAY  # inert: only the _reconstruct stand-in accepts it
        return _StandIn(f"{module}.{name}", target)

    def persistent_load(self, pid: Any) -> Any:
        raise UsageError("the pickle uses persistent ids, which EDM2 statistics never do")


def _refuse(source: str, why: str) -> UsageError:
    return UsageError(" ".join(f"{source} is not usable EDM2 statistics: {why}".split())[:500], hint=HINT)


def _array(value: Any, what: str, source: str) -> np.ndarray:
    if not isinstance(value, _ArrayRecord) or value.array is None:
        raise _refuse(source, f"{what} is a {type(value).__name__}, not a numpy array")
    array = value.array
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
        raise _refuse(source, f"{what} is {array.dtype}, expected float64 or float32")
    return array.astype(np.float64)


def _entry(metric: str, value: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, dict) or not {"mu", "sigma"} <= set(value):
        raise _refuse(source, f"entry '{metric}' is not a dict with 'mu' and 'sigma'")
    mu = _array(value["mu"], f"'{metric}' mu", source)
    sigma = _array(value["sigma"], f"'{metric}' sigma", source)
    if mu.ndim != 1 or mu.shape[0] < 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise _refuse(source, f"'{metric}' mu has shape {list(mu.shape)} and sigma {list(sigma.shape)}, "
                              "expected [D] and [D, D]")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise _refuse(source, f"'{metric}' contains NaN or infinite values")
    if np.abs(sigma - sigma.T).max() > SYMMETRY_RTOL * max(float(np.abs(sigma).max()), 1e-300):
        raise _refuse(source, f"'{metric}' sigma is not symmetric")
    return mu, sigma


def _checked(root: Any, source: str) -> Edm2Stats:
    if not isinstance(root, dict) or not all(isinstance(k, str) for k in root):
        raise _refuse(source, f"it holds a {type(root).__name__}, not a dict of metrics")
    num_images = root.get("num_images")
    if num_images is not None and (type(num_images) is not int or num_images < 0):
        raise _refuse(source, f"num_images is {num_images!r}, not a count")
    entries = {k: _entry(k, v, source) for k, v in root.items() if k != "num_images"}
    if not entries:
        raise _refuse(source, "it holds no metric statistics")
    return Edm2Stats(entries, num_images)


def read_edm2_stats(path: str | Path) -> Edm2Stats:
    """The statistics in an EDM2 .pkl, read by the restricted unpickler; every failure is a one-line UsageError."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise UsageError(f"statistics file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(2)
        if len(head) < 2 or head[0] != 0x80:
            raise _refuse(source, "it is not a pickle (empty, or no pickle protocol header)")
        fh.seek(0)
        try:
            root = _StatsUnpickler(fh).load()
        except _RefusedGlobal as exc:
            raise UsageError(f"refusing to load {source}: it references the global {exc}, which is not on the "
                             "allow-list for EDM2 statistics (numpy arrays only); nothing from the file was executed",
                             hint=HINT) from None
        except UsageError as exc:  # a stand-in refused malformed numpy records
            raise _refuse(source, exc.message) from None
        except EOFError:
            raise _refuse(source, "it is truncated (the pickle ends early)") from None
        except Exception as exc:  # anything else a hostile or damaged file can provoke
            raise _refuse(source, f"corrupt pickle ({type(exc).__name__}: {exc})") from None
    return _checked(root, source)
