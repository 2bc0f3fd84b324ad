"""Before a run directory is touched: does the teacher's denoiser give finite outputs at all?

A teacher whose outputs are NaN or Inf makes every iteration non-finite; a run shorter than
training.max_nonfinite_steps would end "successfully" with an untrained generator. One forward without gradients
at batch 3 (one seeded sample at each of three noise levels the run uses: sigma_init and the median noise level of
the online and of the generator step) is cheap next to one iteration and refuses such a teacher with one line.
"""

from __future__ import annotations

import math

import torch

from simcli.config.spec import NoiseSpec, RunSpec
from simcli.errors import UsageError
from simcli.nets.registry import listing
from simcli.nets.schedule import karras_sigma
from simcli.teachers.registry import Teacher

PROBE_SEED = 0


def median_sigma(noise: NoiseSpec) -> float:
    """The median noise level of a noise distribution: exp(p_mean) (clipped as the spec clips), or the Karras
    schedule at the middle of u's range or of the grid's indices."""
    if noise.kind == "lognormal":
        sigma = math.exp(noise.p_mean)
        return min(max(sigma, noise.sigma_min or sigma), noise.sigma_max or sigma)
    if noise.kind == "karras-grid":  # index 0 is the smallest level
        middle = (noise.index_min + noise.top_index) / 2
        frac = torch.tensor(1 - middle / (noise.steps - 1), dtype=torch.float64)
        return float(karras_sigma(frac, noise.sigma_min, noise.sigma_max, noise.rho))
    frac = torch.tensor(1 - noise.t_max / 2000, dtype=torch.float64)
    return float(karras_sigma(frac, noise.sigma_min, noise.sigma_max, noise.rho))


def probe_sigmas(spec: RunSpec) -> list[float]:
    """The noise levels probed: the generator's sigma_init, the online step's and the generator step's medians."""
    return [spec.generator.sigma_init, median_sigma(spec.online.noise), median_sigma(spec.generator.noise)]


@torch.no_grad()
def check_teacher_finite(spec: RunSpec, teacher: Teacher, device: torch.device) -> None:
    """A one-line UsageError naming the teacher when its denoiser gives NaN or Inf on seeded noise at the probed noise
    levels (on the run's device, eval mode, no gradients). Text-conditioned teachers are not probed here: their
    condition (a prompt's embedding) is prepared later."""
    net = teacher.denoiser
    if net.conditioning.takes_text:
        return
    sigmas = probe_sigmas(spec)
    z = torch.randn((len(sigmas), *net.sample_shape), generator=torch.Generator().manual_seed(PROBE_SEED))
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    x = z * sigma.view(-1, *[1] * (z.ndim - 1))
    labels = None
    if net.label_dim:
        classes = torch.arange(len(sigmas)) % net.label_dim
        labels = torch.nn.functional.one_hot(classes, net.label_dim).to(device=device, dtype=torch.float32)
    training = net.training
    net.to(device).eval()  # build_networks moves the teacher to the run's device too
    try:
        out = net(x.to(device), sigma.to(device), labels)
    finally:
        net.train(training)
    bad = [f"{s:.4g}" for s, row in zip(sigmas, out, strict=True) if not torch.isfinite(row).all()]
    if bad:
        raise UsageError(f"teacher {spec.teacher} gives NaN or Inf outputs at sigma {listing(bad)} (one forward on seeded "
                         "noise); every iteration of the run would be non-finite", hint="the teacher's file is damaged or "
                         "its network overflows at these noise levels; check it with 'simcli sample --teacher ...'")
