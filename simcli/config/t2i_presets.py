"""Presets of the text-to-image teacher families beyond PixArt-alpha (`pixart` is in simcli.config.presets).

No SIM run of these teachers is published. The flow-matching transformers (SD3/3.5, FLUX.1, SANA) take the settings
SiD-DiT found to work across all of them (apple-aiml-research/ml-sid-dit@9596ed9: README.md "Training
Configurations", AMP + FSDP: Adam lr = glr = 1e-6, eps 1e-8, bf16 autocast; run_sid_dit.sh: batch 256 in
micro-batches of 8, guidance 4.5, gradient checkpointing, duration 1 Mimg; sid_dit_train.py: Adam betas (0, 0.999),
no EMA (--ema 0); training/sid_dit_util.py: the noise level t = sigmoid(n), n ~ N(ln 2, 1.6^2), i.e.
ln sigma ~ N(0.693, 1.6^2), for both networks). SiD-DiT's
generator starts at t = 1 (sigma = infinity); simcli's generator needs a finite sigma_init, and FLOW_SIGMA_INIT is
chosen by measurement (its comment). What SiD-DiT does that simcli does not: the fake score (online model) is
guided too (cfg_train_fake 4.5) and its loss weight is 1 - t; here the online model sees the prompt alone and both
losses are unweighted, as in the SIM paper's text-to-image run.

The Stable Diffusion UNets take DMD2's published one-step settings where they map onto SIM (tianweiy/DMD2@4e54501,
experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr1e-5_seed10_dfake10_from_scratch.sh: lr 1e-5 for both
networks, real guidance 1.75, 64 GPUs x 32 images, fp16, gradient checkpointing, the generator fed pure noise at
timestep 999; experiments/sdxl/sdxl_cond399_8node_lr5e-7_1step_diffusion1000_gan5e-3_guidance8_noinit_noode.sh: lr
5e-7, real guidance 8, 64 GPUs x 2 images; neither script keeps an EMA copy). DMD2's SDXL one-step generator is told timestep 399 after an ODE
regression pre-training that simcli does not do; simcli starts it at timestep 999 as DMD2's four-step SDXL does
(its first step, cond999). The noise levels follow the SIM paper's DDPM recipe (ln sigma ~ N(-2, 2^2), truncated to
the teacher's bins; Appendix B.3) with Adam betas (0, 0.999), over the scaled-linear schedule's range.
"""

from __future__ import annotations

from typing import Any

# D(sigma z; sigma) of a flow teacher approaches SiD-DiT's t = 1 generator z - u(z; 1) as sigma grows: the network
# sees t z at time t = sigma / (1 + sigma). On the tiny random SD3, FLUX and SANA pipelines the largest gap to the
# limit, relative to its RMS, was 0.027-0.042 at sigma 999, 0.010-0.016 at 3000 and 0.003-0.005 at 1e4 (first order in
# 1/(1 + sigma), almost all of it from the network time 1000 t falling short of 1000; tests/unit/test_family_wrappers.py).
# 1e4 keeps the generator within 0.5% of SiD-DiT's at a float32-safe input scale.
FLOW_SIGMA_INIT = 1e4
SCALED_LINEAR_SIGMA_RANGE = (0.029167, 14.614641)  # sigma of bins 0 and 999 of beta 0.00085..0.012, scaled_linear


def _adam(lr: float, eps: float = 1e-8) -> dict[str, Any]:
    return {"lr": lr, "beta1": 0.0, "beta2": 0.999, "eps": eps}


def _flow(guidance_scale: float) -> dict[str, Any]:
    """SiD-DiT's settings for every flow-matching transformer (module docstring)."""
    noise = {"kind": "lognormal", "p_mean": 0.693147, "p_std": 1.6}
    return {
        "generator": {"optimizer": _adam(1e-6), "sigma_init": FLOW_SIGMA_INIT, "weighting": "none", "noise": noise},
        "online": {"optimizer": _adam(1e-6), "augment_p": 0.0, "weighting": "none", "noise": noise},
        "ema": {"halflife_kimg": 0.0, "rampup_ratio": None},
        "text": {"guidance_scale": guidance_scale},
        "training": {"batch_size": 256, "batch_gpu": 8, "duration_kimg": 1000.0, "precision": "bf16",
                     "activation_checkpointing": True},
        "logging": {"status_every_kimg": 2.56, "snapshot_every_kimg": 64.0, "grid_samples": 16},
    }


def _unet(lr: float, guidance_scale: float, batch_size: int, batch_gpu: int) -> dict[str, Any]:
    """DMD2's one-step settings for the SD UNets, with the SIM paper's DDPM noise levels (module docstring)."""
    low, high = SCALED_LINEAR_SIGMA_RANGE
    noise = {"kind": "lognormal", "p_mean": -2.0, "p_std": 2.0, "sigma_min": low, "sigma_max": high}
    return {
        "generator": {"optimizer": _adam(lr), "sigma_init": high, "weighting": "none", "noise": noise},
        "online": {"optimizer": _adam(lr), "augment_p": 0.0, "weighting": "none", "noise": noise},
        "ema": {"halflife_kimg": 0.0, "rampup_ratio": None},
        "text": {"guidance_scale": guidance_scale},
        "training": {"batch_size": batch_size, "batch_gpu": batch_gpu, "duration_kimg": 1000.0, "precision": "bf16",
                     "activation_checkpointing": True},
        "logging": {"status_every_kimg": 2.56, "snapshot_every_kimg": 64.0, "grid_samples": 16},
    }


T2I_PRESETS: dict[str, dict[str, Any]] = {
    "sd3": _flow(4.5),  # SD3-medium, SD3.5-medium and -large
    "flux-dev": _flow(4.5),  # guidance-distilled: 4.5 is the embedded guidance input (SiD-DiT sets it so)
    "flux-schnell": _flow(1.0),  # timestep-distilled, no guidance input
    "sana": _flow(4.5),
    "sd15": _unet(1e-5, 1.75, 2048, 32),
    "sdxl": _unet(5e-7, 8.0, 128, 2),
    # PixArt-Sigma: the SIM paper's PixArt-alpha run (the `pixart` preset), with Sigma's own guidance default (4.5,
    # pipelines/pixart_alpha/pipeline_pixart_sigma.py), which equals alpha's.
}
