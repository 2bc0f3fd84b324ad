"""What rank 0 writes into the run directory as a run goes on: grids, generator snapshots with their states, the
best generator, and the run's summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from simcli.config.spec import RunSpec
from simcli.distill.events import EventHandler, GridSaved
from simcli.distill.sharding import full_state_dict
from simcli.nets.denoiser import Denoiser
from simcli.nets.few_step import generator_sigmas
from simcli.nets.lora import is_lora, lora_record, lora_state_dict, merged_state_dict
from simcli.rundir.layout import (
    BEST_GENERATOR_FILE,
    TEACHER_GRID_FILE,
    generator_path,
    grid_path,
    list_generators,
    list_grids,
)
from simcli.rundir.snapshots import prune_generators, prune_states, save_generator
from simcli.sampling.decode import ImageDecode
from simcli.sampling.grids import grid_images
from simcli.sampling.heun import heun_num_evals
from simcli.sampling.images import save_grid, to_uint8

TEACHER_GRID_STEPS = 18
GRID_SEED = 0


def generator_meta(spec: RunSpec, architecture: dict[str, Any], step: int, images_seen: int) -> dict[str, Any]:
    """The metadata every generator file carries: what `simcli sample` and `simcli eval` need to use it."""
    g = spec.generator
    meta = {"spec": spec.model_dump(mode="json"), "architecture": architecture, "sigma_init": g.sigma_init,
            "step": step, "images_seen": images_seen}
    if g.steps > 1:  # a one-step generator's file stays as it was
        meta["generator_sigmas"] = list(generator_sigmas(g.sigma_init, g.steps, g.step_sigmas))
    if g.lora_rank is not None and g.lora_snapshots == "adapters":  # the adapters alone: the teacher gives the rest
        meta.update(lora_record(g.lora_rank, g.lora_alpha))
    return meta


def generator_tensors(ema: nn.Module, spec: RunSpec) -> dict[str, torch.Tensor]:
    """What a generator snapshot holds of the EMA generator: its state dict (whole: a sharded one is gathered on
    rank 0, and every process must call this), or a LoRA generator's adapters or merged weights
    (generator.lora_snapshots)."""
    if is_lora(ema):
        return merged_state_dict(ema) if spec.generator.lora_snapshots == "merged" else lora_state_dict(ema)
    return full_state_dict(ema)


class Grids(Protocol):
    """What rank 0 draws at every snapshot: write(EMA generator, images seen)."""

    def write(self, ema: nn.Module, images_seen: int) -> None: ...

    def needs_teacher(self) -> bool:
        """Whether the next write draws with the teacher too (a sharded run gathers it first)."""
        ...


class ImageGrids:
    """Image teachers: a grid of the EMA generator (grid-<kimg>.png) and, once per run, of the teacher's sampler;
    nothing for vector teachers or n = 0. (Text-to-image runs decode latents: simcli.distill.text_setup.TextGrid.)"""

    def __init__(self, run_dir: Path, teacher: Denoiser, n: int, sigmas: tuple[float, ...], device: torch.device,
                 on_event: EventHandler, decode: ImageDecode = to_uint8):
        self.run_dir, self.teacher, self.sigmas, self.device, self.on_event = run_dir, teacher, sigmas, device, on_event
        self.decode = decode  # latents through their VAE (simcli.sampling.decode), pixels as generate.py converts them
        self.n = n if len(teacher.sample_shape) == 3 else 0

    def needs_teacher(self) -> bool:
        return self.n > 0 and not (self.run_dir / TEACHER_GRID_FILE).exists()

    def write(self, ema: nn.Module, images_seen: int) -> None:
        if self.n == 0:
            return
        teacher_path = self.run_dir / TEACHER_GRID_FILE
        if not teacher_path.exists():
            images, columns = grid_images(self.teacher, self.n, GRID_SEED, self.device, heun_steps=TEACHER_GRID_STEPS,
                                          decode=self.decode)
            save_grid(images, teacher_path, columns)
            self.on_event(GridSaved(teacher_path, f"the teacher, {TEACHER_GRID_STEPS} Heun steps "
                                                  f"({heun_num_evals(TEACHER_GRID_STEPS)} NFE)"))
        path = grid_path(self.run_dir, images_seen)
        images, columns = grid_images(ema, self.n, GRID_SEED, self.device, sigmas=self.sigmas, decode=self.decode)
        save_grid(images, path, columns)
        self.on_event(GridSaved(path, f"the EMA generator at {images_seen / 1000:g} kimg, {len(self.sigmas)} NFE"))


def write_snapshot(
    run_dir: Path, spec: RunSpec, images_seen: int, meta: dict[str, Any], write_state: Callable[[], Path],
    ema_state: dict[str, torch.Tensor],
) -> tuple[Path, Path]:
    """The resumable state (write_state(): state-<kimg>.pt, or a sharded state's folder), the EMA generator
    (generator-<kimg>.safetensors; a resume rewrites it from the state if it is missing), then the oldest states and
    generators beyond logging.keep_* removed; returns (generator, state) paths."""
    state_path = write_state()
    gen_path = generator_path(run_dir, images_seen)
    save_generator(gen_path, ema_state, meta)
    prune_states(run_dir, spec.logging.keep_states)
    prune_generators(run_dir, spec.logging.keep_generators)
    return gen_path, state_path


def save_best_generator(run_dir: Path, ema_state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """generator-best.safetensors: the EMA generator with the best evaluation so far (its score in the metadata)."""
    path = run_dir / BEST_GENERATOR_FILE
    save_generator(path, ema_state, meta)
    return path


def run_summary(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """The parts of a run's summary that the run directory and spec give: where, what, the newest files."""
    generators = list_generators(run_dir)
    grids = list_grids(run_dir)
    return {
        "run_dir": str(run_dir),
        "teacher": spec.teacher,
        "method": spec.loss.method,
        "distance": spec.loss.distance if spec.loss.method == "sim" else None,
        "generator": str(generators[-1]) if generators else None,
        "grid": str(grids[-1]) if grids else None,
        "precision": spec.training.precision,
    }
