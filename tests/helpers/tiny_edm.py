"""A tiny random-weight EDM snapshot in the official pickle format, for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import torch

from simcli.nets.registry import build_edm_network
from tests.helpers.edm_pickle_writer import write_edm_pickle

TINY_DDPMPP = {
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
    "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
    "attn_resolutions": [4], "augment_dim": 9, "dropout": 0.13, "use_fp16": False, "img_resolution": 8,
    "img_channels": 3,
}


def write_tiny_edm(path: Path, label_dim: int = 0, seed: int = 0, dropout: float = TINY_DDPMPP["dropout"]) -> Path:
    """Write a DDPM++ EDMPrecond (8x8, 16 channels) with every weight perturbed, so every layer matters."""
    torch.manual_seed(seed)
    init_kwargs = {**TINY_DDPMPP, "label_dim": label_dim, "dropout": dropout}
    net = build_edm_network("EDMPrecond", init_kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return write_edm_pickle(path, net, init_kwargs)


def tiny_edm_spec(teacher: Path, steps: int, *sets: str, snapshot_every_kimg: float = 0.04):
    """A run of the tiny preset on a tiny EDM teacher file: batch 8 in micro-batches of 4, a status record every
    iteration, no grids, snapshots every snapshot_every_kimg; sets: more `--set` overrides."""
    from simcli.config.resolve import resolve_spec
    from simcli.teachers.registry import describe_teacher_name

    spec, _ = resolve_spec(
        str(teacher), describe_teacher_name, preset="tiny",
        flags={"training": {"duration_steps": steps, "batch_size": 8, "batch_gpu": 4}},
        sets=["logging.status_every_kimg=0.008", "logging.grid_samples=0",
              f"logging.snapshot_every_kimg={snapshot_every_kimg}", *sets],
    )
    return spec
