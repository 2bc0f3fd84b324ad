"""Sample grids to look at: the one-step generator and the teacher's Heun sampler on the same seeds.

A conditional model's grid has one row per class (rows of `n // label_dim` samples) when it has at most n classes;
with more (ImageNet's 1000), a square of n samples of n classes spread evenly over the labels (0, 1000/n, ...); an
unconditional one is a square of `n` samples. Latent samples are decoded (`decode`: simcli.sampling.decode). Sample i uses seed `seed + i` (latent from its own stream, as everywhere in simcli), so
successive grids of a run differ only by the generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from simcli.nets.denoiser import Denoiser
from simcli.sampling.decode import ImageDecode
from simcli.sampling.heun import edm_heun_sample, one_step_generate
from simcli.sampling.images import to_uint8
from simcli.sampling.seeds import SeedRNG, seed_noise


def grid_layout(n: int, label_dim: int) -> tuple[int, torch.Tensor | None]:
    """(columns, one-hot labels [n', label_dim] or None); n' = n rounded down to whole rows of classes, or n when
    there are more classes than samples."""
    if label_dim == 0:
        return max(1, math.ceil(math.sqrt(n))), None
    if label_dim > n:  # one sample each of n classes spread over the labels
        classes = torch.arange(n) * label_dim // n
        return max(1, math.ceil(math.sqrt(n))), torch.nn.functional.one_hot(classes, label_dim).to(torch.float32)
    columns = max(1, n // label_dim)
    classes = torch.arange(label_dim).repeat_interleave(columns)  # row r holds class r
    return columns, torch.nn.functional.one_hot(classes, label_dim).to(torch.float32)


@torch.no_grad()
def grid_images(net: Denoiser, n: int, seed: int, device: torch.device, *, sigmas: Sequence[float] | None = None,
                heun_steps: int = 18, decode: ImageDecode = to_uint8) -> tuple[np.ndarray, int]:
    """uint8 images [n', H, W, C] and the column count: the generator's samples at its noise levels when sigmas is
    given (sigma_init first; simcli.nets.few_step), else the teacher's Heun sampler with heun_steps steps
    (2 * heun_steps - 1 evaluations); `decode` turns samples into images."""
    columns, labels = grid_layout(n, net.label_dim)
    count = n if labels is None else labels.shape[0]
    rng = SeedRNG(range(seed, seed + count))  # on the CPU, so a grid is the same on any device
    latents = rng.randn(tuple(net.sample_shape)).to(device)
    labels = None if labels is None else labels.to(device)
    was_training = net.training
    net.eval()
    if sigmas is not None:
        x = one_step_generate(net, latents, sigmas=sigmas, class_labels=labels, renoise=seed_noise(rng, device))
    else:
        x = edm_heun_sample(net, latents, class_labels=labels, num_steps=heun_steps)
    net.train(was_training)
    return decode(x.cpu()), columns
