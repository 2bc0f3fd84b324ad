"""Read the SIM authors' released generator checkpoint (SIM-DiT-600M, `checkpoint-2024-07-02.pt`): tensors only.

The layout, from their loader (maple-research-lab/SIM at 6535530, models/__init__.py:9-12 and :56): a torch.save'd
dict whose 'ema' entry is a state_dict of their PixArt_alpha wrapper saved under DistributedDataParallel, so every
key starts with 'module.' (which they cut off); below it, 'model.' + PixArt-alpha's original names
(simcli.nets.pixart_original_keys) and possibly the wrapper's noise table 'u' (simcli.nets.sim_noise_table).

torch.load runs with weights_only=True: only tensors, dicts, lists and plain numbers are rebuilt; a pickle that asks
for anything else (a class, a function: code) is refused in one line before any of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError
from simcli.store.torch_files import load_tensors, unpickler_detail

EMA_KEY = "ema"
DDP_PREFIX = "module."
NETWORK_PREFIX = "model."
TABLE_KEY = "u"
CHECKPOINT_HINT = "pass the SIM release's checkpoint-2024-07-02.pt (maple-research-lab/SIM on the Hugging Face Hub)"


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def load_weights_only(path: Path) -> Any:
    """torch.load(weights_only=True) on the CPU, memory-mapped where the file's format allows; one line on failure."""
    try:
        return load_tensors(path, CHECKPOINT_HINT, mmap=True)
    except (MemoryError, UsageError):
        raise
    except pickle.UnpicklingError as exc:
        raise UsageError(f"{path} is not a readable PyTorch checkpoint ({unpickler_detail(str(exc))})",
                         hint=CHECKPOINT_HINT) from None
    except Exception as exc:  # not a torch file, truncated, damaged
        raise UsageError(f"{path} is not a readable PyTorch checkpoint ({_why(exc)})", hint=CHECKPOINT_HINT) from None


def read_sim_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the PixArt network's tensors under PixArt-alpha's original names, the wrapper's other tensors: 'u' when the
    file has it) of a SIM release checkpoint. One-line UsageErrors naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}", hint=CHECKPOINT_HINT)
    loaded = load_weights_only(path)
    entry = loaded.get(EMA_KEY) if isinstance(loaded, dict) else None
    if not isinstance(entry, dict) or not entry:
        found = f"keys {', '.join(map(str, list(loaded)[:4]))}" if isinstance(loaded, dict) else type(loaded).__name__
        raise UsageError(f"{path} is not a SIM release checkpoint: no '{EMA_KEY}' state_dict in it ({found})",
                         hint=CHECKPOINT_HINT)
    odd = [str(k) for k, v in entry.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise UsageError(f"{path}: its '{EMA_KEY}' entry holds {len(odd)} entries that are not named tensors "
                         f"({', '.join(odd[:3])})", hint=CHECKPOINT_HINT)
    if not all(key.startswith(DDP_PREFIX) for key in entry):
        other = next(key for key in entry if not key.startswith(DDP_PREFIX))
        raise UsageError(f"{path}: its '{EMA_KEY}' keys do not all start with '{DDP_PREFIX}' as the release's do "
                         f"(e.g. {other!r})", hint=CHECKPOINT_HINT)
    network, extras, unknown = {}, {}, []
    for key, tensor in entry.items():
        name = key[len(DDP_PREFIX):]
        if name.startswith(NETWORK_PREFIX):
            network[name[len(NETWORK_PREFIX):]] = tensor
        elif name == TABLE_KEY:
            extras[name] = tensor
        else:
            unknown.append(key)
    if unknown or not network:
        listed = ", ".join(unknown[:4]) + (f", ... ({len(unknown) - 4} more)" if len(unknown) > 4 else "")
        raise UsageError(f"{path}: its '{EMA_KEY}' state_dict has "
                         + (f"{len(unknown)} entries outside the PixArt network ({listed})" if unknown
                            else f"no '{DDP_PREFIX}{NETWORK_PREFIX}' entries"), hint=CHECKPOINT_HINT)
    return network, extras
