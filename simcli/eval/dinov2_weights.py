"""The DINOv2 ViT-L/14 weights file for FD-DINOv2: where it is found, its download, and its strict loading.

Where the file comes from, in this order:
1. `weights` as given (`simcli eval --dinov2-weights FILE`, or --feature-weights when DINOv2 is the only feature
   network of the run), read in place;
2. torch hub's cache, where `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')` keeps it:
   <torch.hub.get_dir()>/checkpoints/dinov2_vitl14_pretrain.pth, i.e. $TORCH_HOME/hub/checkpoints (TORCH_HOME
   defaults to ~/.cache/torch). EDM2 itself points torch.hub at ~/.cache/dnnlib/torch_hub instead, so a copy there
   is not found unless TORCH_HOME says so;
3. simcli's cache, <cache>/weights/dinov2_vitl14_pretrain.pth, downloaded there by simcli's downloader (resumable,
   size-checked, sha256 recorded beside it) unless SIMCLI_OFFLINE is set. When it cannot be had, one UsageError
   names the file, its URL and where to put it; nothing is ever written into torch hub's directories.

The file is read with torch.load(weights_only=True): a plain state dict whose keys and shapes must be exactly those
of simcli.eval.dinov2.Dinov2ViT with the sizes read from the file (the hub's names, so the published file loads).
"""

from __future__ import annotations

from pathlib import Path

import torch

from simcli.errors import UsageError
from simcli.eval.backends.common import load_error, weights_cache_path
from simcli.eval.dinov2 import ConfigError, Dinov2ViT, config_from_state_dict, state_dict_mismatch
from simcli.store.torch_files import load_tensors

DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/" + DINOV2_FILE
# 304,368,640 float32 parameters are 1,217,474,560 bytes; a torch.save zip adds well under 1 MB of records. Inferred
# from the architecture, not checked against the server (no network here): hence the wide tolerance.
DINOV2_APPROX_BYTES = 1_217_600_000
DINOV2_SIZE_TOLERANCE = 2_000_000
WHAT = "DINOv2 ViT-L/14"


def hub_checkpoint_path() -> Path:
    """Where torch.hub keeps dinov2_vitl14_pretrain.pth (honours TORCH_HOME and torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / DINOV2_FILE


def _unavailable(why: str) -> UsageError:
    return UsageError(
        f"{WHAT} weights {DINOV2_FILE} are not available ({why}); URL: {DINOV2_URL}",
        hint=f"download it and pass --dinov2-weights PATH, or save it as {hub_checkpoint_path()} (torch hub's cache) "
             f"or {weights_cache_path(DINOV2_FILE)}",
    )


def dinov2_weights_path(weights: Path | str | None = None) -> Path:
    """The weights file to read: `weights`, torch hub's copy, or simcli's cache (downloaded there when online)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"{WHAT} weights file not found: {path}",
                             hint=f"pass the {DINOV2_FILE} file (URL: {DINOV2_URL})")
        return path
    hub_path = hub_checkpoint_path()
    if hub_path.is_file():
        return hub_path
    from simcli.store.cache import offline
    from simcli.store.download import ensure_file

    dest = weights_cache_path(DINOV2_FILE)
    if offline() and not dest.is_file():
        raise _unavailable("offline: SIMCLI_OFFLINE is set")
    try:
        return ensure_file(DINOV2_URL, dest, expected_size=DINOV2_APPROX_BYTES, size_tolerance=DINOV2_SIZE_TOLERANCE)
    except UsageError as exc:  # the network failed, or what came was not the file
        reason = getattr(exc.__cause__, "reason", None) or exc.message
        raise _unavailable(f"the download failed: {str(reason)[:200]}") from None


def _refuse(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not usable {WHAT} weights: {why}",
                      hint=f"expected the state dict of {DINOV2_FILE} (URL: {DINOV2_URL})")


def load_dinov2(path: Path) -> Dinov2ViT:
    """The network whose weights `path` holds (sizes read from the file), in eval mode, on the CPU."""
    path = Path(path)
    try:
        state = load_tensors(path, hint=f"pass the {DINOV2_FILE} file of torch hub's dinov2_vitl14")
    except UsageError:
        raise
    except Exception as exc:  # not a torch file, truncated, damaged: one line
        raise load_error(WHAT, path, exc) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _refuse(path, f"it holds a {type(state).__name__}, not a state dict")
    try:
        cfg = config_from_state_dict(state)
    except ConfigError as exc:
        raise _refuse(path, str(exc)) from None
    model = Dinov2ViT(cfg)
    problem = state_dict_mismatch(model, state)
    if problem is not None:
        raise _refuse(path, problem)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()
