"""TEST-ONLY: write simcli networks in the official NVIDIA EDM snapshot pickle format (edm-spec 1.1-1.6).

The bytes use exactly the upstream global names (torch_utils.persistence._reconstruct_persistent_obj,
torch._utils._rebuild_tensor_v2, numpy.core.multiarray.scalar, ...) although `torch_utils` does not exist
here: the tree to pickle is made of small node objects (`Global`, `Reduce`, `NewObj`, `PersId`) that a
subclass of the pure-Python pickler writes as STACK_GLOBAL/GLOBAL, REDUCE, NEWOBJ + BUILD and BINPERSID
opcodes. Besides faithful files it writes the broken and hostile variants the loader's tests need:
a payload that calls os.system/exec/subprocess, wrong persistence versions, a missing 'ema' key, truncation,
numpy-1 vs numpy-2 spellings of numpy scalars and torch-1.12-style OrderedDict module internals.

Never import this from simcli: it exists to produce test fixtures.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

NUMPY1 = "numpy.core.multiarray"
NUMPY2 = "numpy._core.multiarray"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    torch.float32: "FloatStorage", torch.float64: "DoubleStorage", torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage", torch.int64: "LongStorage", torch.int32: "IntStorage",
    torch.int16: "ShortStorage", torch.int8: "CharStorage", torch.uint8: "ByteStorage", torch.bool: "BoolStorage",
}
# Module hook dicts of a torch 2.x nn.Module __dict__ (all empty OrderedDicts in the files).
HOOK_DICTS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
              "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")
NUMPY_FLOAT_ATTRS = ("skip_scale",)  # attributes upstream stores as np.float64 (edm-spec 1.4)
FAKE_MODULE_SRC = "# stand-in for training/networks.py; never executed\nclass EDMPrecond: pass\n"


class Global:
    """A module-level name, pickled as STACK_GLOBAL (protocol 4) or GLOBAL (protocol 2) without importing it."""

    _cache: dict[tuple[str, str], Global] = {}

    def __new__(cls, module: str, name: str) -> Global:
        key = (module, name)
        if key not in cls._cache:  # one object per name, so the pickle memoises repeats like upstream's
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]


class Reduce:
    """REDUCE(func, args), then BUILD(state) when state is not None."""

    def __init__(self, func: Global, args: tuple, state: Any = None):
        self.func, self.args, self.state = func, args, state


class NewObj:
    """cls EMPTY_TUPLE NEWOBJ, then BUILD(state) (how torch.nn.ModuleDict is pickled)."""

    def __init__(self, cls: Global, state: Any):
        self.cls, self.state = cls, state


class NewDict:
    """cls EMPTY_TUPLE NEWOBJ, then its items by SETITEMS (how a dict subclass such as dnnlib's EasyDict is pickled)."""

    def __init__(self, cls: Global, items: dict):
        self.cls, self.items = cls, items


class PersId:
    """BINPERSID of a tuple (the storage record inside a legacy torch.save blob)."""

    def __init__(self, pid: tuple):
        self.pid = pid


class _NodePickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_node_global(self, obj: Global) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_node_reduce(self, obj: Reduce) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def save_node_newobj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def save_node_newdict(self, obj: NewDict) -> None:
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self._batch_setitems(iter(obj.items.items()))

    def save_node_persid(self, obj: PersId) -> None:
        self.save(obj.pid)
        self.write(pickle.BINPERSID)

    dispatch[Global] = save_node_global
    dispatch[Reduce] = save_node_reduce
    dispatch[NewObj] = save_node_newobj
    dispatch[NewDict] = save_node_newdict
    dispatch[PersId] = save_node_persid


def dumps(tree: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    _NodePickler(buf, protocol=protocol).dump(tree)
    return buf.getvalue()


# ---- tensors -----------------------------------------------------------------------------------------------


def legacy_storage_blob(flat: torch.Tensor, key: str = "0", location: str = "cpu",
                        storage_type: Global | None = None) -> bytes:
    """What torch.storage.TypedStorage.__reduce__ puts in _load_from_bytes(...): a legacy torch.save stream.

    torch itself uses str(storage._cdata) as the key; storage_type overrides the torch.FloatStorage global.
    """
    flat = flat.detach().reshape(-1).contiguous().cpu()
    storage_type = Global("torch", STORAGE_NAMES[flat.dtype]) if storage_type is None else storage_type
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [dumps(LEGACY_MAGIC, 2), dumps(1001, 2), dumps(sys_info, 2),
             dumps(PersId(("storage", storage_type, key, location, flat.numel(), None)), 2),
             dumps([key], 2), struct.pack("<q", flat.numel())]
    raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    return b"".join(parts) + raw.numpy().tobytes()


def tensor_node(storage: torch.Tensor, offset: int = 0, size: tuple | None = None, stride: tuple | None = None,
                blob: bytes | None = None) -> Reduce:
    """_rebuild_tensor_v2(_load_from_bytes(blob), offset, size, stride, False, OrderedDict())."""
    flat = storage.detach().reshape(-1)
    size = tuple(storage.shape) if size is None else tuple(size)
    stride = tuple(storage.contiguous().stride()) if stride is None else tuple(stride)
    loaded = Reduce(Global("torch.storage", "_load_from_bytes"), (legacy_storage_blob(flat) if blob is None else blob,))
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (loaded, offset, size, stride, False, collections.OrderedDict()))


def parameter_node(tensor: torch.Tensor) -> Reduce:
    """_rebuild_parameter(<tensor>, False, OrderedDict())."""
    return Reduce(Global("torch._utils", "_rebuild_parameter"),
                  (tensor_node(tensor), False, collections.OrderedDict()))


def numpy_float64(value: float, spelling: str = NUMPY1) -> Reduce:
    """np.float64 as numpy pickles it: scalar(dtype('f8', False, True) + BUILD state, <8 raw bytes LE>)."""
    dtype = Reduce(Global("numpy", "dtype"), ("f8", False, True), state=(3, "<", None, None, None, -1, -1, 0))
    return Reduce(Global(spelling, "scalar"), (dtype, struct.pack("<d", value)))


# ---- modules -----------------------------------------------------------------------------------------------


def persistent_obj(class_name: str, state: dict, module_src: str, version: int = 6) -> Reduce:
    """REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,)) with upstream's meta key order."""
    meta = {"type": "class", "version": version, "module_src": module_src, "class_name": class_name, "state": state}
    return Reduce(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


class EdmWriter:
    """Turns a simcli module tree into the node tree of an EDM snapshot."""

    def __init__(self, module_src: str = FAKE_MODULE_SRC, numpy_spelling: str = NUMPY1, version: int = 6,
                 ordered_dicts: bool = False, torch_tensors: bool = False, class_names: dict | None = None,
                 dtype: torch.dtype | None = None):
        self.module_src = module_src  # one str object for every module: memoised once, like upstream
        self.class_names = class_names or {}  # module class -> the upstream class name to record (EDM2's)
        self.dtype = dtype  # cast floating tensors (EDM2's post-hoc snapshots are float16)
        self.numpy_spelling = numpy_spelling
        self.version = version
        self.mapping = collections.OrderedDict if ordered_dicts else dict  # torch 1.12 vs torch 2.x writers
        self.torch_tensors = torch_tensors  # True: put real tensors in the tree and let torch's own reducers write them

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def parameter(self, p: torch.Tensor) -> Any:
        p = self._cast(p)
        return nn.Parameter(p.detach().clone(), requires_grad=False) if self.torch_tensors else parameter_node(p)

    def buffer(self, b: torch.Tensor) -> Any:
        b = self._cast(b)
        return b.detach().clone() if self.torch_tensors else tensor_node(b)

    def module_state(self, module: nn.Module, init_kwargs: dict) -> dict:
        state: dict[str, Any] = {"training": False}
        state["_parameters"] = self.mapping(
            (n, self.parameter(p) if p is not None else None) for n, p in module._parameters.items())
        state["_buffers"] = self.mapping(
            (n, self.buffer(b) if b is not None else None) for n, b in module._buffers.items())
        state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
        for name in HOOK_DICTS:
            state[name] = collections.OrderedDict()
        state["_is_full_backward_hook"] = None
        state["_modules"] = self.mapping((n, self.node(c) if c is not None else None) for n, c in module._modules.items())
        for name, value in module.__dict__.items():
            if name.startswith("_") or name == "training":
                continue
            if name in NUMPY_FLOAT_ATTRS and isinstance(value, float):
                state[name] = numpy_float64(value, self.numpy_spelling)
            elif value is None or isinstance(value, (bool, int, float, str, tuple, list)):
                state[name] = value
        state["_init_args"] = ()
        state["_init_kwargs"] = dict(init_kwargs)
        return state

    def node(self, module: nn.Module, init_kwargs: dict | None = None) -> Any:
        if isinstance(module, nn.ModuleDict):
            inner = {"training": False, "_parameters": self.mapping(), "_buffers": self.mapping(),
                     "_non_persistent_buffers_set": set(), "_modules": self.mapping(
                         (n, self.node(c)) for n, c in module._modules.items())}
            return NewObj(Global("torch.nn.modules.container", "ModuleDict"), inner)
        if init_kwargs is None:  # children: record something numpy-flavoured, like UNetBlock's init_attn
            skip = module.__dict__.get("skip_scale")
            init_kwargs = {"skip_scale": numpy_float64(skip, self.numpy_spelling)} if isinstance(skip, float) else {}
        name = self.class_names.get(type(module), type(module).__name__)
        return persistent_obj(name, self.module_state(module, init_kwargs), self.module_src, self.version)


def snapshot_tree(net: nn.Module, init_kwargs: dict, *, class_name: str | None = None, key: str = "ema",
                  extras: bool = True, **writer_options: Any) -> dict:
    """The dict a training snapshot pickles: ema (+ loss_fn, augment_pipe, dataset_kwargs when extras)."""
    writer = EdmWriter(**writer_options)
    ema = writer.node(net, init_kwargs)
    if class_name is not None:
        ema.args[0]["class_name"] = class_name
    tree = {key: ema}
    if extras:
        loss_state = {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5, "_init_args": (), "_init_kwargs": {}}
        tree["loss_fn"] = persistent_obj("EDMLoss", loss_state, "# training/loss.py stand-in\n", writer.version)
        tree["augment_pipe"] = None
        tree["dataset_kwargs"] = {"class_name": "training.dataset.ImageFolderDataset", "path": "data.zip",
                                  "use_labels": False, "xflip": False, "cache": True, "resolution": 8,
                                  "max_size": 50000}
    return tree


def edm_pickle_bytes(net: nn.Module, init_kwargs: dict, **options: Any) -> bytes:
    """A faithful snapshot pickle (protocol 4) of `net`; options as for snapshot_tree and EdmWriter."""
    return dumps(snapshot_tree(net, init_kwargs, **options), protocol=4)


def write_edm_pickle(path: str | Path, net: nn.Module, init_kwargs: dict, *, truncate_to: float | None = None,
                     **options: Any) -> Path:
    """Write a snapshot to `path`; truncate_to=0.5 keeps only the first half of the bytes."""
    data = edm_pickle_bytes(net, init_kwargs, **options)
    if truncate_to is not None:
        data = data[: int(len(data) * truncate_to)]
    path = Path(path)
    path.write_bytes(data)
    return path


# ---- hostile payloads --------------------------------------------------------------------------------------


def malicious_payload(kind: str, marker: str | Path) -> Reduce:
    """A REDUCE that would create `marker` if a plain unpickler ran it."""
    marker = str(marker)
    if kind == "os.system":
        return Reduce(Global("posix", "system"), (f"touch '{marker}'",))  # how os.system pickles on Linux
    if kind == "exec":
        return Reduce(Global("builtins", "exec"), (f"open({marker!r}, 'w').close()",))
    if kind == "subprocess":
        return Reduce(Global("subprocess", "check_call"), (["touch", marker],))
    if kind == "copyreg":
        return Reduce(Global("copyreg", "_reconstructor"), (Global("pathlib", "Path"), Global("builtins", "object"), None))
    raise ValueError(f"unknown payload kind {kind!r}")


def malicious_pickle_bytes(net: nn.Module, init_kwargs: dict, kind: str, marker: str | Path,
                           where: str = "nested") -> bytes:
    """A faithful snapshot with a payload at the top ('top'), as 'ema' ('ema') or deep in its state ('nested')."""
    tree = snapshot_tree(net, init_kwargs)
    payload = malicious_payload(kind, marker)
    if where == "top":
        return dumps(payload)
    if where == "ema":
        tree["ema"] = payload
    else:
        tree["ema"].args[0]["state"]["_init_kwargs"]["img_resolution"] = payload
    return dumps(tree)

