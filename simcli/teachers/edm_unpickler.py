"""The restricted unpickler for the official NVIDIA EDM network pickles (`edm-*.pkl`): it never runs their code.

The files pickle a dict whose network is a `torch_utils.persistence` object (edm-spec 1.1-1.4), which upstream
rebuilds by exec'ing its embedded `module_src`. Here each allow-listed global (edm-spec 1.6) maps to an inert
stand-in: persistent objects become `PersistentRecord(class_name, state)` (module_src is only hashed), and each
tensor's legacy torch.save blob (edm-spec 1.5) is parsed by a second restricted unpickler. Any other global is
refused before anything is called. simcli.teachers.edm_pickle turns the records into a simcli network.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError

PERSISTENCE_VERSION = 6
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save stream
LEGACY_PROTOCOL = 1001
HINT = ("only NVIDIA EDM and EDM2 network snapshots (torch_utils.persistence version 6 pickles, e.g. edm-*.pkl, "
        "edm2-*.pkl) can be loaded")

# torch.<name>Storage -> dtype; the inner (legacy torch.save) allow-list. EDM only uses FloatStorage.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
INNER_ALLOWED = frozenset(("torch", name) for name in STORAGE_DTYPES)


def bad_file(message: str) -> UsageError:
    """A refusal of the file's content, with the standard hint, on one line (messages may quote the file)."""
    return UsageError(" ".join(message.split())[:500], hint=HINT)


class PersistentRecord:
    """What a persistent object becomes here: its class name and state (its `__dict__`), nothing executable."""

    __slots__ = ("class_name", "state", "module_src_sha256")

    def __init__(self, class_name: str, state: dict[str, Any], module_src_sha256: str):
        self.class_name = class_name
        self.state = state
        self.module_src_sha256 = module_src_sha256

    def __setstate__(self, state: Any) -> None:
        raise bad_file("the pickle tries to BUILD a persistent object, which EDM pickles never do")


class ModuleDictRecord:
    """Stand-in for torch.nn.ModuleDict (NEWOBJ then BUILD with the module's `__dict__`)."""

    class_name = "ModuleDict"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise bad_file(f"malformed ModuleDict state of type {type(state).__name__}")
        self.state = state


class EasyDictRecord(dict):
    """Stand-in for dnnlib.util.EasyDict, the root of EDM2 snapshots: a plain dict (NEWOBJ, then SETITEMS)."""

    def __setstate__(self, state: Any) -> None:
        if state not in (None, {}):
            raise bad_file("malformed EasyDict: it carries instance state besides its items")


class _ArrayRecord:
    """Stand-in for numpy.core.multiarray._reconstruct(ndarray, (0,), b'b') + BUILD(state): `array` is a plain
    numeric numpy array built from the state's raw bytes (EDM2's encoder stores its latent scale and bias so)."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple)
        if not ok or not isinstance(state[2], _DTypeRecord) or state[3] not in (False, True):
            raise bad_file("malformed numpy array state")
        shape, dtype, raw = state[1], state[2], state[4]
        if not all(isinstance(n, int) and 0 <= n <= 2**31 for n in shape) or len(shape) > 8:
            raise bad_file(f"malformed numpy array shape {shape!r}")
        if isinstance(raw, str):  # protocol-2 writers store the raw bytes as a latin-1 str
            raw = raw.encode("latin-1")
        np_dtype = np.dtype(dtype.spec).newbyteorder(dtype.byteorder if dtype.byteorder != "|" else "=")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape) * np_dtype.itemsize:
            raise bad_file(f"malformed numpy array: {len(raw) if isinstance(raw, (bytes, bytearray)) else 'no'} "
                           f"bytes for shape {list(shape)} of {dtype.spec}")
        self.array = np.frombuffer(bytes(raw), dtype=np_dtype).reshape(shape, order="F" if state[3] else "C").copy()


_NDARRAY = object()  # what the numpy.ndarray global stands for: only _reconstruct may take it


def _reconstruct_array(cls: Any, shape: Any, typecode: Any) -> _ArrayRecord:
    """numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') as numpy's pickles call it; nothing else."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise bad_file("malformed numpy array: _reconstruct called with other arguments than numpy's own")
    return _ArrayRecord()


def _array_from_buffer(raw: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayRecord:
    """numpy.core.numeric._frombuffer(bytes, dtype, shape, order): numpy's protocol-5 spelling of an array."""
    record = _ArrayRecord()
    record.__setstate__((1, tuple(shape) if isinstance(shape, (tuple, list)) else shape, dtype, order == "F", raw))
    return record


class _StorageData:
    """One storage from a legacy blob: a flat tensor of `numel` elements (owned, writable)."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat  # replaced by the data once the blob's raw bytes are read


class _DTypeRecord:
    """Stand-in for numpy.dtype(spec, align, copy) + BUILD(state); only plain numeric kinds are accepted."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: Any):
        if not isinstance(spec, str) or len(spec) < 2 or spec[0] not in "fiub" or not spec[1:].isdigit():
            raise bad_file(f"refusing numpy dtype {spec!r}: only numeric scalars occur in EDM pickles")
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]
        else:
            raise bad_file(f"malformed numpy dtype state {state!r}")


class _StandIn:
    """A callable stand-in returned by find_class for one allowed global; BUILD on it is refused."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn: Any):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, *args: Any) -> None:
        raise bad_file(f"the pickle tries to modify the global {self.qualname}")

    __setattr__ = __setstate__


class _ForbiddenGlobal(UsageError):
    """A global outside the allow-list (the message is its module.name); unpickle_edm words the refusal."""


# ---- outer stand-ins ---------------------------------------------------------------------------------------


def _reconstruct_persistent_obj(meta: Any, src_hashes: dict[int, tuple[str, str]]) -> PersistentRecord:
    """REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,)) -> a record; module_src is only hashed."""
    if not isinstance(meta, dict):
        raise bad_file(f"malformed persistent object: meta is a {type(meta).__name__}, not a dict")
    class_name = meta.get("class_name")
    if meta.get("type") != "class":
        raise bad_file(f"unsupported persistent object type {meta.get('type')!r} for {class_name!r}")
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        raise bad_file(f"unsupported torch_utils.persistence format version {version!r} for {class_name!r} "
                       f"(only version {PERSISTENCE_VERSION} is supported)")
    state, src = meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(src, str):
        raise bad_file(f"malformed persistent object {class_name!r}: bad class_name, state or module_src")
    cached = src_hashes.get(id(src))  # all instances share one module_src string (memoised in the pickle)
    if cached is None or cached[0] is not src:
        cached = (src, hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest())
        src_hashes[id(src)] = cached
    return PersistentRecord(class_name, state, cached[1])


def _numpy_scalar(dtype: Any, data: Any = None) -> float | int | bool:
    """numpy.core.multiarray.scalar(dtype, raw bytes) -> the equivalent Python number (edm-spec 1.4)."""
    if not isinstance(dtype, _DTypeRecord):
        raise bad_file("malformed numpy scalar: its dtype is not a numpy.dtype")
    if isinstance(data, str):  # Python-2 era pickles stored the raw bytes as a latin-1 str
        data = data.encode("latin-1")
    np_dtype = np.dtype(dtype.spec).newbyteorder(dtype.byteorder if dtype.byteorder != "|" else "=")
    if not isinstance(data, bytes) or len(data) != np_dtype.itemsize:
        raise bad_file(f"malformed numpy scalar of dtype {dtype.spec}")
    return np.frombuffer(data, dtype=np_dtype)[0].item()


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 -> a plain tensor viewed from the storage (offset and stride honoured)."""
    if not isinstance(storage, _StorageData):
        raise bad_file("malformed tensor: its storage is not a torch.storage._load_from_bytes blob")
    ok = isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
    ok = ok and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
    if not ok:
        raise bad_file(f"malformed tensor layout: offset {offset!r}, size {size!r}, stride {stride!r}")
    flat = storage.flat
    numel = math.prod(size)
    if numel > flat.numel():  # only expanded (stride-0) views do this, and EDM files hold none
        raise bad_file(f"malformed tensor: size {list(size)} has more elements than its storage ({flat.numel()})")
    end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if numel else offset
    if end > flat.numel():
        raise bad_file(f"malformed tensor: size {list(size)} at offset {offset} overruns its storage "
                       f"of {flat.numel()} elements")
    if offset == 0 and numel == flat.numel() and (stride == _contiguous_strides(size) or numel <= 1):
        return flat.view(size)  # the usual case: the blob holds exactly this tensor
    return torch.as_strided(flat, size, stride, offset).clone()


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state) -> the plain tensor (the loader copies it into the net)."""
    if not isinstance(data, torch.Tensor):
        raise bad_file("malformed parameter: its data is not a tensor")
    return data


# ---- inner: one legacy torch.save blob per tensor ----------------------------------------------------------


class _InnerUnpickler(pickle.Unpickler):
    """Protocol-2 pickles of a legacy torch.save stream: only torch.*Storage globals, storage persistent ids."""

    def __init__(self, file: io.BytesIO, storages: dict[str, list[Any]]):
        super().__init__(file)
        self.storages = storages  # key -> [dtype, numel, _StorageData]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in INNER_ALLOWED:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return STORAGE_DTYPES[name]  # a torch.dtype stands for the storage class

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', torch.FloatStorage, key, location, numel, view_metadata); location ('cpu', 'cuda:0') ignored.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise bad_file(f"malformed storage record {pid!r} in a tensor blob")
        _, storage_type, key, location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not (isinstance(storage_type, torch.dtype) and isinstance(key, str) and isinstance(location, str)
                and isinstance(numel, int) and numel >= 0 and view_metadata is None):
            raise bad_file(f"malformed storage record {pid!r} in a tensor blob")
        entry = self.storages.setdefault(key, [storage_type, numel, None])
        if entry[:2] != [storage_type, numel]:
            raise bad_file(f"inconsistent storage records for key {key!r} in a tensor blob")
        if entry[2] is None:
            entry[2] = _StorageData(torch.empty(0, dtype=storage_type))
        return entry[2]


def parse_legacy_storage(blob: Any) -> _StorageData:
    """torch.storage._load_from_bytes(blob) for a legacy torch.save stream holding one storage (edm-spec 1.5).

    The stream is: magic int, protocol 1001, sys_info dict, the object (a storage persistent id), the list of
    storage keys, then per key an int64 element count and the raw little-endian data.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise bad_file("malformed tensor: _load_from_bytes got no bytes")
    view = memoryview(blob)
    f = io.BytesIO(blob)  # shares the bytes object's buffer (no copy)
    storages: dict[str, list[Any]] = {}
    try:
        magic = _InnerUnpickler(f, storages).load()
        protocol = _InnerUnpickler(f, storages).load()
        sys_info = _InnerUnpickler(f, storages).load()
        if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(sys_info, dict):
            raise bad_file("malformed tensor blob: not a legacy torch.save stream")
        if sys_info.get("little_endian") is not True:
            raise bad_file("unsupported tensor blob: written on a big-endian machine")
        result = _InnerUnpickler(f, storages).load()
        keys = _InnerUnpickler(f, storages).load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as exc:
        raise bad_file(f"malformed tensor blob: {exc}") from exc
    if not isinstance(result, _StorageData) or not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise bad_file("malformed tensor blob: it does not hold exactly the storages it declares")
    for key in keys:
        dtype, numel, data = storages[key]
        header = f.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
            raise bad_file(f"malformed tensor blob: bad element count for storage {key!r}")
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        start = f.tell()
        if start + nbytes > len(view):
            raise bad_file(f"malformed tensor blob: storage {key!r} is truncated")
        raw = bytearray(view[start : start + nbytes])  # an owned, writable copy
        f.seek(start + nbytes)
        data.flat = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
    if f.tell() != len(view):
        raise bad_file("malformed tensor blob: trailing bytes after the storage data")
    return result


# ---- outer unpickler ---------------------------------------------------------------------------------------


class _OuterUnpickler(pickle.Unpickler):
    """The EDM snapshot pickle: only the edm-spec 1.6 globals, each mapped to an inert stand-in."""

    def __init__(self, file: Any):
        super().__init__(file)
        src_hashes: dict[int, tuple[str, str]] = {}
        self.allowed: dict[tuple[str, str], Any] = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                lambda meta: _reconstruct_persistent_obj(meta, src_hashes),
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch.storage", "_load_from_bytes"): parse_legacy_storage,
            ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # written with numpy 1.x
            ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # written with numpy >= 2
            ("numpy", "dtype"): lambda spec, align=False, copy=False: _DTypeRecord(spec),
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,  # EDM2's encoder constants
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,  # protocol 5
            ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
            ("dnnlib.util", "EasyDict"): EasyDictRecord,  # the root of EDM2 snapshots
            ("builtins", "set"): set,  # protocol <= 3 writers (defensive; protocol 4 uses EMPTY_SET)
            ("builtins", "frozenset"): frozenset,
        }

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        if target in (ModuleDictRecord, EasyDictRecord):
            return target  # NEWOBJ needs a real class; it only stores its items and BUILD state
        if target is _NDARRAY:
            return _NDARRAY  # inert: only _reconstruct_array accepts it
        if target in (collections.OrderedDict, set, frozenset):
            return target  # immutable built-in types: calling them builds plain containers
        return _StandIn(f"{module}.{name}", target)

    def persistent_load(self, pid: Any) -> Any:
        raise bad_file("the pickle uses persistent ids, which EDM network pickles never do")


def unpickle_edm(file: Any, source: str = "<pickle>") -> Any:
    """Run the restricted unpickler over an open binary file; every failure is a one-line UsageError."""
    head = file.read(2)
    if len(head) < 2 or head[0] != 0x80:
        hint = "it is a zip archive (torch.save?), not an EDM snapshot pickle" if head == b"PK" else HINT
        raise UsageError(f"{source} is not a pickle (empty, or no pickle protocol header)", hint=hint)
    file.seek(file.tell() - 2)
    try:
        return _OuterUnpickler(file).load()
    except _ForbiddenGlobal as exc:
        raise bad_file(f"refusing to load {source}: it references the global {exc.message}, which is not on the "
                       "EDM allow-list; nothing from the file was executed") from None
    except UsageError as exc:
        raise UsageError(f"{source}: {exc.message}", hint=exc.hint) from None
    except (EOFError, pickle.UnpicklingError, struct.error) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise UsageError(f"{source} is truncated (the pickle ends early)",
                             hint="re-download the file; it is incomplete") from None
        raise bad_file(f"{source} is a corrupt pickle: {exc}") from None
    except Exception as exc:  # anything else a hostile or damaged file can provoke in the stand-ins
        raise bad_file(f"{source} is a corrupt or unsupported pickle: {type(exc).__name__}: {exc}") from None

