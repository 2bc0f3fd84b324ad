"""simcli's teacher sampler against EDM's published sampler, bit for bit on the CPU.

The reference below is written in this test from EDM's Algorithm 2 (Karras et al. 2022) as generate.py runs it
(edm-spec.md section 3.5): per-seed generators that draw the latent, then the class label (also when a fixed
class is asked for, which then overwrites it), then the churn noise at every step (randn_like on the float64
state, even when it is scaled by 0); the schedule in float64 through round_sigma; the float64 state; the
network called on the float64 state with the 0-dim float64 sigma; its output cast to float64; and uint8 images
made from the float64 result with (x * 127.5 + 128).clip(0, 255). simcli must give torch.equal results.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.sampling.heun import HeunSettings, edm_heun_sample
from simcli.sampling.images import to_uint8
from simcli.sampling.run import resolve_heun_settings, sample_to_file, teacher_samples
from simcli.sampling.seeds import SeedRNG
from simcli.teachers.edm_catalog import EDM_TEACHERS
from simcli.teachers.edm_pickle import load_edm_pickle
from simcli.teachers.gmm import ring
from tests.helpers.tiny_edm import write_tiny_edm

# ------------------------------------------------------------------------------------------ the reference


class ReferenceStackedGenerators:
    """generate.py's per-seed random generator, restated: one torch.Generator per seed (mod 2^32), and each
    draw takes one slice from every generator and stacks them on dim 0."""

    def __init__(self, seeds: list[int]):
        self.gens = [torch.Generator().manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.gens])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:], dtype=x.dtype)

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, size=(), generator=g) for g in self.gens])


def reference_edm_sampler(net, latents, class_labels, randn_like, num_steps=18, sigma_min=0.002, sigma_max=80,
                          rho=7, S_churn=0, S_min=0, S_max=float("inf"), S_noise=1):  # EDM's argument names
    """Algorithm 2 of the EDM paper, step by step in the order generate.py's edm_sampler computes it."""
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    idx = torch.arange(num_steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + idx / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([net.round_sigma(t), torch.zeros_like(t[:1])])  # t_N = 0
    x = latents.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]  # 0-dim float64 tensors
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x)  # drawn at every step
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


def reference_generate(net, seeds, class_idx=None, draw_label=True, **sampler_kwargs):
    """generate.py's loop body for one batch: (float64 samples, one-hot labels or None, uint8 NHWC or None).

    draw_label=False skips the class draw when class_idx is given (what simcli did before), for the check
    that the tests notice the difference."""
    rnd = ReferenceStackedGenerators(seeds)
    latents = rnd.randn(net.sample_shape)
    labels = None
    if net.label_dim and (draw_label or class_idx is None):
        labels = torch.eye(net.label_dim)[rnd.randint(net.label_dim)]
    elif net.label_dim:
        labels = torch.zeros(len(seeds), net.label_dim)
    if class_idx is not None:
        labels[:, :] = 0
        labels[:, class_idx] = 1
    with torch.no_grad():
        x = reference_edm_sampler(net, latents, labels, rnd.randn_like, **sampler_kwargs)
    images = None
    if x.ndim == 4:
        images = (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x, labels, images


def _edm_kwargs(settings: HeunSettings) -> dict:
    return {"num_steps": settings.num_steps, "S_churn": settings.s_churn, "S_min": settings.s_min,
            "S_max": settings.s_max, "S_noise": settings.s_noise}


SETTINGS = {
    "deterministic": HeunSettings(num_steps=6),
    # gamma = min(10/6, sqrt(2)-1): the sqrt(2)-1 cap; t_0 = 80 lies above S_max, so one step draws but adds 0
    "churn-capped": HeunSettings(num_steps=6, s_churn=10.0, s_min=0.05, s_max=50.0, s_noise=1.003),
    # ImageNet's recipe scaled down: gamma = 2/8 = 0.25, steps below S_min and above S_max
    "churn-window": HeunSettings(num_steps=8, s_churn=2.0, s_min=0.05, s_max=50.0, s_noise=1.003),
}
SEED, N = 40, 5


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_pickles(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-edm")
    return {"cond": str(write_tiny_edm(root / "cond.pkl", label_dim=10, seed=0)),
            "uncond": str(write_tiny_edm(root / "uncond.pkl", label_dim=0, seed=1))}


@pytest.fixture(scope="module")
def teachers(tiny_pickles) -> dict[str, Denoiser]:
    nets = {name: load_edm_pickle(path)[0].eval() for name, path in tiny_pickles.items()}
    return {"tiny-edm-cond": nets["cond"], "tiny-edm-uncond": nets["uncond"], "gmm-ring8": ring(std=0.1).eval()}


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("teacher", ["tiny-edm-cond", "tiny-edm-uncond", "gmm-ring8"])
def test_teacher_samples_equal_edm_reference(teachers, teacher, setting):
    net, settings = teachers[teacher], SETTINGS[setting]
    ref_x, ref_labels, ref_images = reference_generate(net, list(range(SEED, SEED + N)), **_edm_kwargs(settings))
    x, labels, info = teacher_samples(net, N, seed=SEED, batch_size=N, device="cpu", sampler=settings)
    assert x.dtype == torch.float64
    assert torch.equal(x, ref_x)
    assert (labels is None) == (ref_labels is None)
    if labels is not None:
        assert torch.equal(labels, ref_labels.argmax(1))
    if ref_images is not None:
        assert np.array_equal(to_uint8(x), ref_images)
    assert info["nfe"] == 2 * settings.num_steps - 1 == info["sampler"]["nfe"]
    # The sampler alone, on arbitrary seeds (mod 2^32 included), with the labels drawn by SeedRNG.
    seeds = [3, 2**32 + 9, 12345]
    rng = SeedRNG(seeds)
    latents = rng.randn(net.sample_shape)
    onehot = None if not net.label_dim else torch.nn.functional.one_hot(rng.randint(net.label_dim), net.label_dim).float()
    ref, _, _ = reference_generate(net, seeds, **_edm_kwargs(settings))
    assert torch.equal(edm_heun_sample(net, latents, class_labels=onehot, rng=rng, **settings.sampler_kwargs()), ref)


def test_fixed_class_keeps_edm_draw_order(teachers):
    """generate.py draws a class per seed even with --class, so the churn noise after it lines up."""
    net, settings = teachers["tiny-edm-cond"], SETTINGS["churn-capped"]
    seeds = list(range(SEED, SEED + N))
    ref_x, _, ref_images = reference_generate(net, seeds, class_idx=3, **_edm_kwargs(settings))
    x, labels, _ = teacher_samples(net, N, seed=SEED, batch_size=N, device="cpu", class_label=3, sampler=settings)
    assert labels.tolist() == [3] * N
    assert torch.equal(x, ref_x) and np.array_equal(to_uint8(x), ref_images)
    skipped, _, _ = reference_generate(net, seeds, class_idx=3, draw_label=False, **_edm_kwargs(settings))
    assert not torch.equal(skipped, ref_x)  # the test would catch a sampler that skips the class draw


def test_sample_to_file_writes_edm_uint8_images(tiny_pickles, teachers, tmp_path):
    settings = SETTINGS["churn-window"]
    _, ref_labels, ref_images = reference_generate(teachers["tiny-edm-cond"], list(range(SEED, SEED + N)),
                                                   **_edm_kwargs(settings))
    out = tmp_path / "teacher.npz"
    summary = sample_to_file(out, generator=None, teacher=tiny_pickles["cond"], sampler=settings, n=N, seed=SEED,
                             batch_size=N, device="cpu")
    with np.load(out) as data:
        assert np.array_equal(data["images"], ref_images)
        assert data["labels"].tolist() == ref_labels.argmax(1).tolist()
    assert summary["nfe"] == 15 and summary["heun_steps"] == 8
    assert summary["sampler"] == {"name": "edm-heun", "steps": 8, "s_churn": 2.0, "s_min": 0.05, "s_max": 50.0,
                                  "s_noise": 1.003, "deterministic": False, "preset": None, "nfe": 15}


class _PerSampleSigma(Denoiser):
    """The old simcli call: sigma expanded to one value per sample."""

    def __init__(self, inner: Denoiser):
        super().__init__()
        self.inner, self.sample_shape, self.label_dim = inner, inner.sample_shape, inner.label_dim

    def forward(self, x, sigma, class_labels=None):
        return self.inner(x, sigma.expand(x.shape[0]), class_labels)


def test_scalar_sigma_is_what_makes_it_exact(teachers):
    """An unconditional EDM network computes its noise embedding once for a 0-dim sigma; per-sample sigmas
    change the result by float32 ulps (measured up to 4.8e-7 after 18 steps), so the comparison above would
    catch the old per-sample call."""
    net = teachers["tiny-edm-uncond"]
    seeds, kwargs = list(range(SEED, SEED + N)), _edm_kwargs(SETTINGS["deterministic"])
    exact, _, _ = reference_generate(net, seeds, **kwargs)
    per_sample, _, _ = reference_generate(_PerSampleSigma(net), seeds, **kwargs)
    assert not torch.equal(exact, per_sample)
    assert (exact - per_sample).abs().max() < 1e-5


def test_uint8_conversion_uses_the_float64_values():
    """(x * 127.5 + 128) rounds differently in float32 near a pixel boundary; EDM converts the float64 state."""
    x = torch.full((1, 1, 1, 1), 1 / 127.5 - 1e-10, dtype=torch.float64)  # 127.5 x + 128 is just below 129
    assert to_uint8(x).item() == 128 == int((x * 127.5 + 128).clip(0, 255).to(torch.uint8))
    assert to_uint8(x.to(torch.float32)).item() == 129  # float32 rounds x up to the boundary
    assert to_uint8(torch.tensor([[[[-2.0, 2.0]]]], dtype=torch.float64)).tolist() == [[[[0], [255]]]]


# ----------------------------------------------------------------------------------------- the settings


def test_paper_settings_come_from_the_catalog():
    imagenet = resolve_heun_settings("edm-imagenet64", paper=True)
    assert (imagenet.num_steps, imagenet.s_churn, imagenet.s_min, imagenet.s_max, imagenet.s_noise) == (
        256, 40.0, 0.05, 50.0, 1.003)
    assert imagenet.nfe == 511 and imagenet.preset == "paper" and not imagenet.deterministic
    for name, entry in EDM_TEACHERS.items():
        settings = resolve_heun_settings(name, paper=True)
        assert settings.num_steps == entry.sampler.steps and settings.nfe == entry.sampler.nfe
        assert settings.deterministic == entry.sampler.deterministic
    assert resolve_heun_settings("edm-ffhq64", paper=True).num_steps == 40
    assert resolve_heun_settings("edm-cifar10", paper=True) == HeunSettings(18, preset="paper")


def test_explicit_settings_override_paper_and_defaults_are_deterministic():
    assert resolve_heun_settings("digits") == HeunSettings() == HeunSettings(18, 0.0, 0.0, math.inf, 1.0)
    assert HeunSettings().nfe == 35 and HeunSettings().deterministic
    mixed = resolve_heun_settings("edm-imagenet64", paper=True, steps=32, s_noise=1.0)
    assert (mixed.num_steps, mixed.s_churn, mixed.s_min, mixed.s_max, mixed.s_noise) == (32, 40.0, 0.05, 50.0, 1.0)
    assert mixed.nfe == 63 and mixed.preset == "paper+overrides"
    plain = resolve_heun_settings("gmm-ring8", steps=10, churn=5.0, s_max=20.0)
    assert plain == HeunSettings(10, 5.0, 0.0, 20.0, 1.0)


@pytest.mark.parametrize("teacher", ["digits", "gmm-ring8", "gmm:ring.json", "local/edm-cifar10.pkl", "t.safetensors"])
def test_paper_without_published_settings_is_a_usage_error(teacher):
    with pytest.raises(UsageError, match="no published sampler settings") as err:
        resolve_heun_settings(teacher, paper=True)
    assert "edm-imagenet64" in err.value.hint


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"churn": -1.0}, "--churn"), ({"s_min": 5.0, "s_max": 1.0}, "--s-min <= --s-max"),
     ({"s_noise": math.nan}, "--s-noise"), ({"churn": math.inf}, "--churn"), ({"steps": 0}, "at least 1 step")],
)
def test_bad_settings_are_usage_errors(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        resolve_heun_settings("gmm-ring8", **kwargs)


def test_settings_summary_is_strict_json():
    summary = HeunSettings().summary()
    assert summary["s_max"] is None  # unbounded: null, since JSON has no infinity
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary == {"name": "edm-heun", "steps": 18, "s_churn": 0.0, "s_min": 0.0, "s_max": None, "s_noise": 1.0,
                       "deterministic": True, "preset": None, "nfe": 35}
