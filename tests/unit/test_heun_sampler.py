"""EDM Heun sampler, per-seed RNG and one-step generation (simcli.sampling) on analytic teachers."""

from __future__ import annotations

import pytest
import torch

from simcli.errors import UsageError
from simcli.eval.gmm_metrics import gmm_report
from simcli.nets.denoiser import Denoiser
from simcli.sampling.heun import edm_heun_sample, heun_num_evals, karras_sigmas, one_step_generate
from simcli.sampling.seeds import SeedRNG, per_seed_randn
from simcli.teachers.gmm import GaussianMixture, ring

# edm-spec.md section 3.5, N = 18.
EDM_SIGMAS_18 = [80, 57.586, 40.786, 28.375, 19.352, 12.910, 8.401, 5.315, 3.257, 1.923, 1.088, 0.5853,
                 0.2964, 0.1395, 0.05995, 0.02294, 0.007528, 0.002, 0]  # fmt: skip


class CountingDenoiser(Denoiser):
    """Wraps a denoiser, counting calls and recording the sigmas it was called with."""

    def __init__(self, inner: Denoiser, sigma_min: float = 0.0, sigma_max: float = float("inf")):
        super().__init__()
        self.inner, self.sigma_min, self.sigma_max = inner, sigma_min, sigma_max
        self.sample_shape = inner.sample_shape
        self.calls: list[float] = []

    def forward(self, x, sigma, class_labels=None):
        # EDM's edm_sampler hands the network the float64 state and a 0-dim float64 sigma.
        assert x.dtype == torch.float64 and sigma.dtype == torch.float64 and sigma.shape == ()
        self.calls.append(float(sigma))
        return self.inner(x, sigma, class_labels)


@pytest.fixture(scope="module")
def ring8() -> GaussianMixture:
    return ring()


def test_karras_sigmas_match_edm_spec():
    t = karras_sigmas(18)
    assert t.dtype == torch.float64 and t.shape == (19,)
    expected = torch.tensor(EDM_SIGMAS_18, dtype=torch.float64)
    assert torch.allclose(t, expected, atol=1e-3, rtol=1e-3)
    assert t[-1] == 0 and bool((t[:-1] > t[1:]).all())


def test_karras_sigmas_round_and_edge_cases():
    rounded = karras_sigmas(5, round_sigma=lambda s: torch.round(s * 100) / 100)
    assert rounded.tolist() == [80.0, 17.53, 2.52, 0.17, 0.0, 0.0]  # 0.002 rounds to 0
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(UsageError, match="needs at least 1 step, got 0"):
        karras_sigmas(0)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 5, 18])
def test_sampler_calls_denoiser_2n_minus_1_times(ring8, num_steps):
    counter = CountingDenoiser(ring8)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    out = edm_heun_sample(counter, z, num_steps=num_steps, S_churn=5.0, rng=SeedRNG(range(16)))
    assert len(counter.calls) == heun_num_evals(num_steps) == 2 * num_steps - 1
    assert out.dtype == torch.float64 and out.shape == (16, 2)  # EDM returns the float64 state


def test_sampler_clamps_sigma_range_to_the_denoiser(ring8):
    counter = CountingDenoiser(ring8, sigma_min=0.01, sigma_max=10.0)
    edm_heun_sample(counter, torch.zeros(4, 2), num_steps=6)
    assert counter.calls[0] == pytest.approx(10.0) and min(counter.calls) == pytest.approx(0.01)


def test_seed_rng_follows_edm_draw_order():
    rng = SeedRNG([7, 2**32 + 8])  # seeds are taken mod 2^32
    latents, labels = rng.randn((3,)), rng.randint(10)
    for row, seed in enumerate([7, 8]):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(latents[row], torch.randn(3, generator=g))
        assert labels[row] == torch.randint(10, (), generator=g)
    assert torch.equal(per_seed_randn([8], (3,)), latents[1:])


def test_samples_do_not_depend_on_batching(ring8):
    def run(seeds):
        rng = SeedRNG(seeds)
        return edm_heun_sample(ring8, rng.randn((2,)), num_steps=8, S_churn=20.0, rng=rng)

    together = run([3, 4, 5])
    assert torch.equal(together, torch.cat([run([3]), run([4]), run([5])]))
    assert torch.equal(together, torch.cat([run([3, 4]), run([5])]))
    assert torch.equal(together[1:], run([4, 5]))
    assert not torch.equal(run([3]), run([6]))


def test_churn_noise_changes_samples(ring8):
    rng_a, rng_b = SeedRNG([1, 2]), SeedRNG([1, 2])
    z = rng_a.randn((2,))
    rng_b.randn((2,))
    plain = edm_heun_sample(ring8, z, num_steps=8)
    churned = edm_heun_sample(ring8, z, num_steps=8, S_churn=20.0, rng=rng_a)
    assert not torch.allclose(plain, churned)
    assert torch.equal(churned, edm_heun_sample(ring8, z, num_steps=8, S_churn=20.0, rng=rng_b))


def test_18_step_sampler_matches_ring8(ring8):
    rng = SeedRNG(range(4000))
    x = edm_heun_sample(ring8, rng.randn((2,)), num_steps=18)
    report = gmm_report(x, ring8, seed=1)
    # Measured: l1 0.032, precision 0.9805 (exact: 0.9889), MMD 4.8e-4, SW2 0.040 (exact vs exact: 0.068).
    assert report["mode_weight_l1"] < 0.06
    assert report["precision"] > 0.9
    assert report["mmd"] < 3e-3
    assert report["sw2"] < 0.1
    # Too few steps leave the samples visibly off the modes.
    coarse = gmm_report(edm_heun_sample(ring8, rng.randn((2,)), num_steps=5), ring8, seed=1)
    assert coarse["precision"] < 0.5


def _scalar_heun_gain(s: float, num_steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> float:
    """Heun's factor on x - mu for a 1-D Gaussian of std s, written from the spec independently."""
    t = [(sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
         for i in range(num_steps)] + [0.0]  # fmt: skip

    def f(y: float, sig: float) -> float:
        return y * sig / (s * s + sig * sig)  # dy/dsigma = (y - (D - mu)) / sigma, y = x - mu

    y = 1.0
    for i in range(num_steps):
        d = f(y, t[i])
        y_next = y + (t[i + 1] - t[i]) * d
        if i < num_steps - 1:
            y_next = y + (t[i + 1] - t[i]) * 0.5 * (d + f(y_next, t[i + 1]))
        y = y_next
    return y


def test_single_gaussian_teacher():
    mu, s = torch.tensor([0.3, -0.5], dtype=torch.float64), torch.tensor([0.7, 1.3], dtype=torch.float64)
    teacher = GaussianMixture(torch.ones(1), mu[None], s[None])
    z = SeedRNG(range(4000)).randn((2,), dtype=torch.float64)
    x = edm_heun_sample(teacher, z, num_steps=18)  # float64, like everything in this test
    # Linear ODE: every sample is mu + gain * (80 z - mu), gain from an independent scalar recursion.
    gain = torch.tensor([_scalar_heun_gain(float(v), 18) for v in s], dtype=torch.float64)
    assert torch.allclose(x, mu + gain * (80 * z - mu), atol=1e-9)
    # Statistics: the 18-step schedule inflates the std by ~5% here (gain / exact gain = 1.050, 1.048).
    assert torch.allclose(x.mean(0), mu, atol=0.06)
    assert torch.allclose(x.std(0), s, rtol=0.08)
    # With many steps Heun converges to the exact flow map mu + (80 z - mu) s / sqrt(s^2 + 80^2).
    fine = edm_heun_sample(teacher, z[:200], num_steps=256)
    exact = mu + (80 * z[:200] - mu) * s / torch.sqrt(s**2 + 80**2)
    assert torch.allclose(fine, exact, atol=2e-3 * 80)
    assert (fine - exact).abs().max() < 0.01


def test_one_step_generate_is_the_denoiser_at_sigma_init(ring8):
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    expected = ring8(2.5 * z, 2.5)
    assert torch.equal(one_step_generate(ring8, z), expected)
    assert torch.equal(one_step_generate(ring8, z, batch_size=7), expected)
    # sigma goes in the latents' dtype (float32 here), as a network would receive it.
    sigma = torch.full((50,), 0.8)
    assert torch.equal(one_step_generate(ring8, z, sigma_init=0.8, batch_size=64), ring8(0.8 * z, sigma))


class _LinearDenoiser(Denoiser):
    """D(x; sigma) = W x + sigma + label: a parametrised toy that records its class labels."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.seen_labels: list[torch.Tensor] = []

    def forward(self, x, sigma, class_labels=None):
        self.seen_labels.append(class_labels)
        return self.lin(x) + sigma[:, None] + class_labels[:, None]


def test_one_step_generate_batches_labels_without_autograd():
    net = _LinearDenoiser()
    z, labels = torch.randn(10, 2), torch.arange(10.0)
    out = one_step_generate(net, z, class_labels=labels, batch_size=4)
    assert not out.requires_grad
    assert [lbl.tolist() for lbl in net.seen_labels] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with torch.no_grad():
        assert torch.allclose(out, net.lin(2.5 * z) + 2.5 + labels[:, None])
