"""What a resumable state file holds: the three networks, both optimisers and the run's counters."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simcli.config.spec import RunSpec
from simcli.distill.setup import Networks
from simcli.distill.sharded_state import load_sharded_state, load_whole_state
from simcli.distill.sharding import is_sharded
from simcli.errors import UsageError
from simcli.nets.lora import is_lora, load_lora_state_dict, lora_state_dict
from simcli.rundir.snapshots import SHARDED_STATE_KEY

STATE_FORMAT = "simcli-state/1"


def _empty_window() -> dict[str, float]:
    return {"loss_online": 0.0, "loss_generator": 0.0, "n": 0, "nonfinite": 0}


@dataclass
class Progress:
    """Counters saved in every state file (the loss window too, so resumed status records match exactly)."""

    step: int = 0
    nonfinite_consecutive: int = 0
    nonfinite_total: int = 0
    elapsed_s: float = 0.0
    window: dict[str, float] = field(default_factory=_empty_window)
    best_score: float | None = None
    micro_batch: int | None = None
    """Images per micro-batch, which the random streams belong to (kept on resume; None in states before it)."""
    prompts_sha256: str | None = None
    """Text-to-image runs: the sha256 of the prompt file the run was distilled from (a resume warns on a change)."""
    cpu_threads: int | None = None
    """CPU runs: the torch threads it computed with (reductions may split by them, so a resume with another count
    warns that the numbers leave those of an uninterrupted run; None on CUDA and in states before it)."""
    loss_scalers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each optimiser's LossScaler fields (simcli.distill.precision), for fp16 runs."""

    def reset_window(self) -> None:
        self.window = _empty_window()


def network_tensors(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a state keeps of a network: its state dict, or a LoRA network's adapters (its base is the teacher's)."""
    return lora_state_dict(net) if is_lora(net) else net.state_dict()


def load_network_tensors(net: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    if is_lora(net):
        load_lora_state_dict(net, tensors)
    else:
        net.load_state_dict(tensors)


def state_header(spec: RunSpec, nets: Networks, progress: Progress) -> dict[str, Any]:
    """What a state holds besides tensors: its format, the spec, the architecture and the counters."""
    return {
        "format": STATE_FORMAT,
        "spec": spec.model_dump_json(),
        "architecture": json.dumps(nets.architecture),
        "progress": dataclasses.asdict(progress),
    }


def state_dict(spec: RunSpec, nets: Networks, opts: dict[str, torch.optim.Optimizer], progress: Progress) -> dict[str, Any]:
    """Everything needed to resume, as tensors and plain data (loadable with weights_only=True)."""
    return {
        **state_header(spec, nets, progress),
        "generator": network_tensors(nets.generator),
        "online": network_tensors(nets.online),
        "ema": network_tensors(nets.ema),
        "opt_generator": opts["generator"].state_dict(),
        "opt_online": opts["online"].state_dict(),
    }


def restore(state: dict[str, Any], nets: Networks, opts: dict[str, torch.optim.Optimizer]) -> Progress:
    """Load a state (a file's, or a sharded state's header: simcli.rundir.snapshots.read_state) into the networks and
    optimisers, sharded or not; returns the saved counters."""
    if state.get("format") != STATE_FORMAT:
        raise UsageError(f"state file has unknown format {state.get('format')!r}")
    if SHARDED_STATE_KEY in state:
        load_sharded_state(Path(state[SHARDED_STATE_KEY]), nets, opts)
    elif is_sharded(nets.generator):
        load_whole_state(state, nets, opts)
    else:
        _load_whole(state, nets, opts)
    saved = state["progress"]
    known = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in saved.items() if k in known})
    progress.window = {**_empty_window(), **progress.window}  # states from before a counter was added
    return progress


def _load_whole(state: dict[str, Any], nets: Networks, opts: dict[str, torch.optim.Optimizer]) -> None:
    load_network_tensors(nets.generator, state["generator"])
    load_network_tensors(nets.online, state["online"])
    load_network_tensors(nets.ema, state["ema"])
    opts["generator"].load_state_dict(state["opt_generator"])
    opts["online"].load_state_dict(state["opt_online"])
