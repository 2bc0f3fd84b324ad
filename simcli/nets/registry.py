"""Rebuild a network from the architecture record stored beside its weights.

The record and the weights are untrusted input. Before anything is allocated, `network_with_weights` builds the
record on the meta device and refuses, each in one line naming the file: counts beyond sanity bounds, more
parameters than MAX_PARAMETERS, weights that disagree with the record, weights holding NaN or Inf, and an
architecture whose weights plus the activations of one forward at batch 1 (measured by running that forward on the
meta device) exceed the memory the machine has.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.edm2_precond import EDM2Precond
from simcli.nets.edm_precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from simcli.nets.mlp import MLPDenoiser
from simcli.rundir.network_file import short_repr

# Preconditioner class names as recorded in the official EDM and EDM2 pickles (`class_name` of the `ema` object).
EDM_CLASSES: dict[str, type[Denoiser]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
    "Precond": EDM2Precond,  # EDM2 (NVlabs/edm2 training/networks_edm2.py)
}


def build_edm_network(class_name: Any, init_kwargs: dict[str, Any]) -> Denoiser:
    """A freshly initialised EDM preconditioner + UNet from its class name and recorded `_init_kwargs`."""
    cls = EDM_CLASSES.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise UsageError(f"unknown EDM network class {short_repr(class_name)}",
                         hint=f"expected one of {', '.join(EDM_CLASSES)}")
    try:
        return cls(**init_kwargs)
    except TypeError as exc:
        raise UsageError(f"bad init_kwargs for EDM network class {class_name!r}: {exc}") from exc


# Sanity bounds on a recorded architecture, checked before anything is built (the record is untrusted input).
MAX_PARAMETERS = 20_000_000_000  # elements of all parameters and buffers; FLUX.1's transformer has 11.9e9
DIFFUSERS_KINDS = ("diffusers", "pixart")  # 'pixart': records written before the other diffusers families
MAX_BLOCKS = 64  # num_blocks, len(channel_mult), num_layers: upstream uses at most 4
MAX_NOISE_LEVELS = 10_000  # iDDPM's M (upstream 1000): its table is computed step by step at construction
MAX_RESOLUTION = 8192


def _check_counts(architecture: dict[str, Any], source: str) -> None:
    """Refuse structural counts that would make even a meta-device build slow (many modules, long loops)."""
    kwargs = architecture.get("init_kwargs", architecture)
    if architecture.get("kind") in DIFFUSERS_KINDS:  # the diffusers config and the training schedule
        config, schedule = architecture.get("config"), architecture.get("schedule") or {}
        if not isinstance(config, dict) or not isinstance(schedule, dict):
            raise UsageError(f"{source}: the recorded diffusers architecture's config or schedule is not a mapping")
        kwargs = {**config, "M": schedule.get("num_train_timesteps"), "img_resolution": config.get("sample_size")}
    if not isinstance(kwargs, dict):
        raise UsageError(f"{source}: the recorded architecture's init_kwargs are not a mapping")
    limits = {"num_blocks": MAX_BLOCKS, "num_layers": MAX_BLOCKS, "M": MAX_NOISE_LEVELS, "img_resolution": MAX_RESOLUTION}
    for name, limit in limits.items():
        value = kwargs.get(name)
        if isinstance(value, int) and not 0 <= value <= limit:
            raise UsageError(f"{source}: the recorded architecture asks for {name}={value} (at most {limit} supported)",
                             hint="the file is damaged or not a network simcli can build")
    mult = kwargs.get("channel_mult")
    if isinstance(mult, (list, tuple)) and len(mult) > MAX_BLOCKS:
        raise UsageError(f"{source}: the recorded architecture has {len(mult)} resolution levels "
                         f"(at most {MAX_BLOCKS} supported)", hint="the file is damaged or not a network simcli can build")


def meta_network(architecture: dict[str, Any], source: str = "checkpoint") -> Denoiser:
    """The recorded architecture built on the meta device: its structure and tensor shapes, no memory, no init.

    Refuses (one-line UsageError) counts beyond the sanity bounds first, and any record the constructors reject.
    """
    _check_counts(architecture, source)
    with torch.device("meta"):
        return _build(architecture, source)


def _build(architecture: dict[str, Any], source: str) -> Denoiser:
    """build_network, with anything a constructor raises turned into a one-line UsageError naming `source`."""
    try:
        return build_network(architecture)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc.message}", hint=exc.hint) from None
    except Exception as exc:  # the record is untrusted input: anything a constructor raises is a refusal
        raise UsageError(f"{source}: cannot build the recorded architecture: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}", hint="the file is damaged or not a network simcli can build"
                         ) from None


def count_elements(net: Denoiser) -> int:
    """Elements in the network's state_dict (parameters and persistent buffers); works on the meta device."""
    return sum(t.numel() for t in net.state_dict().values())


def check_size(net: Denoiser, source: str, limit: int = MAX_PARAMETERS) -> int:
    """The element count of a (meta) network; a one-line UsageError when it exceeds `limit`."""
    count = count_elements(net)
    if count > limit:
        raise UsageError(f"{source}: the recorded architecture asks for {count:,} parameters ({count * 4 / 2**30:,.1f} GiB "
                         f"in float32), more than the {limit:,} simcli builds",
                         hint="the file is damaged or hostile; nothing was allocated")
    return count


def check_finite_weights(state_dict: Mapping[str, Any], source: str) -> None:
    """A one-line UsageError when a floating-point tensor holds NaN or Inf (its largest magnitude is then NaN or Inf:
    one reduction per tensor, no temporary as large as the tensor)."""
    bad = [name for name, t in state_dict.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
           and t.numel() and not torch.isfinite(torch.linalg.vector_norm(t, float("inf")))]
    if bad:
        raise UsageError(f"{source}: the weights hold NaN or Inf values ({len(bad)} of {len(state_dict)} tensors: "
                         f"{listing(bad, 3)})", hint="the file is damaged or was saved from a diverged run; "
                         "use an earlier snapshot or another file")


class _PeakMemory(TorchDispatchMode):
    """Bytes of the tensors alive at once during what runs under it (meta tensors work: no memory, no compute)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():  # a view shares its base's memory
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                weakref.finalize(t, self._freed, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def forward_memory(skeleton: Denoiser) -> int | None:
    """Peak bytes of the activations of one forward at batch 1 without gradients, from a forward of the meta network
    (`meta_network`); None when it cannot be told (text-conditioned networks, a forward the meta device refuses)."""
    if skeleton.conditioning.takes_text:
        return None
    net = skeleton.to("meta")  # buffers a constructor keeps on the CPU (iDDPM's table) too
    labels = torch.zeros(1, net.label_dim, device="meta") if net.label_dim else None
    peak = _PeakMemory()
    try:
        with torch.no_grad(), peak:
            net(torch.zeros(1, *net.sample_shape, device="meta"), torch.ones(1, device="meta"), labels)
    except Exception:  # the estimate is a safeguard: a network the meta device cannot run is not refused for it
        return None
    return peak.peak


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, or less where a cgroup (container, SLURM job) limits it;
    None when the system does not say."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:  # cgroup v2
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def _device_memory() -> int:
    """Free bytes of the current CUDA device (0 without one): sampling runs there when there is one."""
    try:
        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    except RuntimeError:
        return 0


def check_memory(skeleton: Denoiser, source: str) -> None:
    """A one-line UsageError when building the recorded network and one forward of it at batch 1 need more memory
    than the machine has (its RAM, or a CUDA device's free memory when there is one), before anything is allocated.

    The parameter count bounds the weights alone: a small file can record an architecture whose activations for
    one sample (a large img_resolution, attention over every pixel) take terabytes."""
    weights = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    activations = forward_memory(skeleton) or 0
    needed, available = weights + activations, available_memory()
    if available is None or needed <= available or needed <= _device_memory():
        return
    raise UsageError(f"{source}: the recorded architecture needs about {_gib(needed)} for its weights and one forward "
                     f"at batch 1 ({_gib(weights)} weights, {_gib(activations)} activations), more than the "
                     f"{_gib(available)} of memory available", hint="the file is damaged or hostile, or needs a "
                     "machine with more memory; nothing was allocated")


def _gib(nbytes: int) -> str:
    """Bytes in MiB, GiB or TiB, one decimal."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30)):
        if nbytes >= size / 8:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes / 2**20:,.1f} MiB"


DTYPE_MISMATCH = "with other dtypes"


def listing(names: list[str], limit: int = 4) -> str:
    """The first `limit` names, comma-separated, and how many more there are."""
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def shape_mismatches(expected: Mapping[str, Any], found: Mapping[str, Any], dtypes: bool = False) -> list[str]:
    """Missing, unexpected and mis-shaped entries of `found` against `expected` (name -> tensor), worded.

    With `dtypes`, tensors of the right shape but another dtype are listed too, as "with other dtypes".
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    common = [k for k in expected if k in found]
    shapes = [f"{k} {list(found[k].shape)} in the file vs {list(expected[k].shape)} here"
              for k in common if list(found[k].shape) != list(expected[k].shape)]
    kinds = [f"{k} {found[k].dtype} in the file vs {expected[k].dtype} here" for k in common
             if dtypes and list(found[k].shape) == list(expected[k].shape) and found[k].dtype != expected[k].dtype]
    problems = []
    for label, names, limit in (("missing", missing, 4), ("unexpected", unexpected, 4), ("with other shapes", shapes, 2),
                                (DTYPE_MISMATCH, kinds, 2)):
        if names:
            problems.append(f"{len(names)} {label} ({listing(names, limit)})")
    return problems


def with_dropout(architecture: dict[str, Any], p: float) -> dict[str, Any]:
    """The record of an EDM network (kind 'edm') with the UNet's dropout set to p; ValueError for other kinds."""
    if architecture.get("kind") != "edm":
        raise ValueError(f"a {architecture.get('kind')!r} network records no EDM dropout")
    return {**architecture, "init_kwargs": {**architecture.get("init_kwargs", {}), "dropout": float(p)}}


def build_network(architecture: dict[str, Any]) -> Denoiser:
    """A freshly initialised network of the recorded architecture."""
    arch = dict(architecture)
    kind = arch.pop("kind", None)
    if kind == "mlp":
        return MLPDenoiser(**arch)
    if kind == "edm":
        kwargs = arch.get("init_kwargs", {})
        if not isinstance(kwargs, dict):
            raise UsageError(f"the recorded init_kwargs are not a mapping, got {short_repr(kwargs)}")
        return build_edm_network(arch.get("class_name"), dict(kwargs))
    if kind in DIFFUSERS_KINDS:  # a diffusers network; diffusers is imported only here
        from simcli.nets.diffusers_denoiser import build_diffusers_network

        return build_diffusers_network(arch)
    raise UsageError(f"unknown network kind {short_repr(kind)} in checkpoint", hint="was it written by a newer simcli?")


# simcli writes its networks' weights in the dtype the network holds them in (float32): a file with other dtypes was
# made or edited elsewhere, and loading would cast it silently (int8 codes read as numbers, float64 values beyond
# float32's range turned to Inf after the finite check).
NATIVE_DTYPE_HINT = "simcli's network files hold float32 weights; convert the tensors with .float() and save again"


def network_with_weights(architecture: dict[str, Any], state_dict: Mapping[str, Any], source: str, *,
                         what: str = "architecture", hint: str = "the file's architecture record and its tensors disagree",
                         dtypes: bool = False, dtype_hint: str | None = None,
                         check: Callable[[Denoiser], list[str]] | None = None) -> Denoiser:
    """Rebuild the recorded architecture and load its weights (strictly); one-line UsageError on a mismatch.

    The record is checked on the meta device first (sanity bounds, size, then names and shapes, with `dtypes`
    also dtypes, against the file's tensors; `dtype_hint` replaces `hint` when dtypes are all that differ), so a damaged or hostile record is refused before anything is
    allocated. `check`, when given, then sees the meta network: it returns further problems (worded) for the
    same message, or raises its own UsageError. Messages name `source` and the recorded `what`; `hint` goes
    with a mismatch. The one checked load behind every loader of a recorded network (native files, EDM pickles).
    """
    if not isinstance(architecture, dict):
        raise UsageError(f"{source}: the recorded architecture is not a mapping")
    skeleton = meta_network(architecture, source)
    check_size(skeleton, source)
    problems = shape_mismatches(skeleton.state_dict(), state_dict, dtypes)
    if not problems and check is not None:
        problems = check(skeleton)
    if problems:
        only_dtypes = all(DTYPE_MISMATCH in p for p in problems)
        raise UsageError(f"{source}: weights do not match the recorded {what}: " + "; ".join(problems),
                         hint=dtype_hint if only_dtypes and dtype_hint else hint)
    check_finite_weights(state_dict, source)
    check_memory(skeleton, source)
    del skeleton
    net = _build(architecture, source)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UsageError(f"{source}: weights do not match the recorded {what} ({str(exc).splitlines()[0]})") from None
    return net
