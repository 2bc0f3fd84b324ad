"""The baselines as their authors ran them: each per-method default against the official code's value, and the
behaviour of the settings in the two update steps (shared dropout mask, eval mode, augment labels).

Official code read: mingyuanzhou/SiD main at 01fbb13 (sid_train.py, training/sid_training_loop.py,
training/sid_loss.py), pkulwj1994/diff_instruct at 0c37389 (README.md, di_train.py, training/di_loss.py,
training/di_training_loop.py), NVlabs/edm at 008a4e5 (train.py, training/training_loop.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simcli.config.resolve import resolve_spec
from simcli.config.spec import LognormalNoise, LossSpec
from simcli.distill.augment import AUGMENT_DIM, AugmentPipe, online_augmentation
from simcli.distill.batches import BatchPlan
from simcli.distill.steps import Context, generator_update, make_generator_loss, noisy_generator_batch, online_update
from simcli.distill.streams import IterationStreams, online_phase
from simcli.nets.edm_precond import EDMPrecond
from simcli.nets.mlp import MLPDenoiser
from simcli.teachers.registry import describe_teacher_name


def method_spec(method: str, teacher: str = "edm-cifar10"):
    spec, _ = resolve_spec(teacher, describe_teacher_name, flags={"loss": {"method": method}})
    return spec


# ---------------------------------------------------------------------------------------------- defaults


def test_sid_defaults_are_sids_official_settings():
    spec = method_spec("sid")
    # sid_train.py: --augment default 0.12 -> AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1,
    # aniso=1, translate_frac=1), network augment_dim=9; sid_loss.py __call__ (fake-score step) augments.
    assert spec.online.augment_p == 0.12
    # sid_train.py: --init_sigma default 2.5 (also every run_sid.sh line).
    assert spec.generator.sigma_init == 2.5
    # sid_training_loop.py: true_score.eval() and fake_score_ddp.eval() before the generator update.
    assert spec.generator.score_dropout == "off"


def test_di_defaults_are_diff_instructs_official_settings():
    spec = method_spec("di")
    # di_train.py: --augment default 0.12 -> the same AugmentPipe; di_loss.py DI_EDMLoss.__call__ (Sg step) augments.
    assert spec.online.augment_p == 0.12
    # README.md's CIFAR-10 recipe: di_train.py ... --init_sigma 1.0 (the flag's own default, 10e-4, is not used).
    assert spec.generator.sigma_init == 1.0
    # di_loss.py DI_EDMLoss.gloss: Sg.train(), Sd.train(); CUDA RNG state saved before Sd's call and restored
    # before Sg's, so the teacher and the online model share one dropout mask.
    assert spec.generator.score_dropout == "shared-mask"


def test_sim_defaults_are_our_documented_choices():
    spec = method_spec("sim")
    assert spec.online.augment_p == 0.0  # the SIM paper does not mention augmentation
    assert spec.generator.sigma_init == 2.5  # SIM eq. B.4
    assert spec.generator.score_dropout == "off"


@pytest.mark.parametrize("method", ["sim", "sid", "di"])
def test_ema_defaults_are_edms_for_every_method(method):
    # sid_train.py / di_train.py: --ema 0.5 (Mimg); their loops' ema_rampup_ratio = 0.05 (EDM training_loop.py).
    spec = method_spec(method)
    assert (spec.ema.halflife_kimg, spec.ema.rampup_ratio) == (500.0, 0.05)


@pytest.mark.parametrize("method", ["sim", "sid", "di"])
def test_mixtures_are_never_augmented(method):
    assert method_spec(method, teacher="gmm-ring8").online.augment_p == 0.0


def test_settings_are_validated():
    with pytest.raises(Exception, match="augment_p"):
        resolve_spec("edm-cifar10", describe_teacher_name, sets=["online.augment_p=1.0"])
    with pytest.raises(Exception, match="score_dropout"):
        resolve_spec("edm-cifar10", describe_teacher_name, sets=["generator.score_dropout=on"])


# ---------------------------------------------------------------------------------------------- dropout in the generator step


class DropoutNet(nn.Module):
    """A vector denoiser with heavy dropout, so a different mask shows in the output."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(dim, 64), nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, x, sigma, class_labels=None):
        return x + self.body(x)


def record_calls(net: nn.Module) -> list[tuple[bool, torch.Tensor]]:
    calls: list[tuple[bool, torch.Tensor]] = []
    net.register_forward_hook(lambda module, args, out: calls.append((module.training, out.detach().clone())))
    return calls


def run_generator_step(score_dropout: str, method: str = "di", dim: int = 16):
    generator, teacher = DropoutNet(dim, seed=1), DropoutNet(dim, seed=2)
    online = copy.deepcopy(teacher)  # the same weights: the same mask gives the same output
    seen = {"online": record_calls(online), "teacher": record_calls(teacher)}
    plan = BatchPlan(1.0, 8, 8, (dim,), 0, torch.device("cpu"))
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    ctx = Context(plan, IterationStreams(5, 0, torch.device("cpu")))
    generator_update(generator, online, teacher, optimizer, make_generator_loss(LossSpec(method=method), "none", dim),
                     ctx, LognormalNoise(), grad_through_networks=method != "di", score_dropout=score_dropout)
    return seen, online, teacher


@pytest.mark.parametrize("method", ["di", "sid"])
def test_shared_mask_gives_teacher_and_online_model_one_dropout_mask(method):
    seen, online, teacher = run_generator_step("shared-mask", method)
    (on_train, on_out), = seen["online"]
    (te_train, te_out), = seen["teacher"]
    assert on_train and te_train  # dropout on in both
    assert torch.equal(on_out, te_out)  # identical networks, identical mask
    x = torch.randn(8, 16)
    assert not torch.equal(online.eval()(x, None), online.train()(x, None))  # dropout does change the output
    assert not online.eval().training and not teacher.training  # put back in eval mode afterwards


def test_without_the_restore_the_masks_differ():
    """The control: the same two calls in train mode without restoring the RNG state drop different units."""
    from simcli.distill.steps import score_outputs

    teacher = DropoutNet(seed=2).train()
    online = copy.deepcopy(teacher)
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    on, te = score_outputs(online, teacher, x, torch.ones(8), None, shared_mask=False)
    assert not torch.equal(on, te)
    torch.manual_seed(3)
    on_shared, te_shared = score_outputs(online, teacher, x, torch.ones(8), None, shared_mask=True)
    assert torch.equal(on_shared, te_shared)


@pytest.mark.parametrize("method", ["di", "sid", "sim"])
def test_off_runs_teacher_and_online_model_in_eval(method):
    seen, online, teacher = run_generator_step("off", method)
    (on_train, on_out), = seen["online"]
    (te_train, te_out), = seen["teacher"]
    assert not on_train and not te_train
    assert torch.equal(on_out, te_out)  # deterministic eval outputs of identical networks


def test_shared_mask_keeps_the_gradient_scoping():
    """DI: both networks without a graph; SIM/SiD: theta's gradient still flows through both networks' inputs."""
    outputs = {}
    for method in ("di", "sim"):
        generator, teacher = DropoutNet(seed=1), DropoutNet(seed=2)
        online = copy.deepcopy(teacher)
        grads = []
        online.register_forward_hook(lambda m, a, out, grads=grads: grads.append(out.requires_grad))
        plan = BatchPlan(1.0, 8, 8, (16,), 0, torch.device("cpu"))
        generator_update(generator, online, teacher, torch.optim.SGD(generator.parameters(), lr=0.0),
                         make_generator_loss(LossSpec(method=method), "none", 16),
                         Context(plan, IterationStreams(0, 0, torch.device("cpu"))), LognormalNoise(),
                         grad_through_networks=method != "di", score_dropout="shared-mask")
        outputs[method] = grads
    assert outputs == {"di": [False], "sim": [True]}


def tiny_edm(augment_dim: int = 9, dropout: float = 0.13) -> EDMPrecond:
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[4], augment_dim=augment_dim, dropout=dropout)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def test_shared_mask_on_an_edm_network():
    teacher = tiny_edm().train()
    online = copy.deepcopy(teacher)
    from simcli.distill.steps import score_outputs

    x, sigma = torch.randn(4, 3, 8, 8), torch.full((4,), 0.7)
    torch.manual_seed(0)
    on, te = score_outputs(online, teacher, x, sigma, None, shared_mask=True)
    assert torch.equal(on, te)
    assert not torch.equal(on, teacher.eval()(x, sigma))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shared_mask_on_cuda():
    from simcli.distill.steps import score_outputs

    teacher = tiny_edm().cuda().train()
    online = copy.deepcopy(teacher)
    x, sigma = torch.randn(4, 3, 8, 8, device="cuda"), torch.full((4,), 0.7, device="cuda")
    torch.manual_seed(0)
    on, te = score_outputs(online, teacher, x, sigma, None, shared_mask=True)
    assert torch.equal(on, te)
    on2, te2 = score_outputs(online, teacher, x, sigma, None, shared_mask=False)
    assert not torch.equal(on2, te2)


# ---------------------------------------------------------------------------------------------- augmentation in the online step


def test_augmented_images_are_the_target_and_labels_reach_the_online_model():
    generator, online = tiny_edm(), tiny_edm()
    plan = BatchPlan(2.5, 6, 6, (3, 8, 8), 0, torch.device("cpu"))
    streams = IterationStreams(0, 0, torch.device("cpu"))
    unet_kwargs = []
    online.model.register_forward_hook(lambda m, a, kw, out: unet_kwargs.append(kw.get("augment_labels")), with_kwargs=True)
    pipe = AugmentPipe(0.9)
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-4)
    online_update(generator, online, optimizer, Context(plan, streams), online_phase(0), LognormalNoise(), augment=pipe)
    (labels,) = unet_kwargs
    assert labels is not None and labels.shape == (6, AUGMENT_DIM) and labels.abs().sum() > 0

    # The batch: x0 is the augmented image, x = x0 + sigma eps, the labels those of the augmentation.
    with torch.no_grad():
        plain = noisy_generator_batch(generator, plan, LognormalNoise(), streams.begin(online_phase(0), 0))
        b = noisy_generator_batch(generator, plan, LognormalNoise(), streams.begin(online_phase(0), 0), pipe)
    assert plain.augment_labels is None
    torch.testing.assert_close(b.augment_labels, labels)
    rng = streams.begin(online_phase(0), 0)  # replay the draws: z, sigma, augmentation, eps
    z = torch.randn((6, 3, 8, 8), generator=rng)
    sigma = LognormalNoise()
    from simcli.distill.steps import draw_sigma

    sig = draw_sigma(sigma, 6, rng, torch.device("cpu"))
    with torch.no_grad():
        x0 = generator(2.5 * z, torch.full((6,), 2.5))
    augmented, aug_labels = pipe(x0, rng)
    eps = torch.randn((6, 3, 8, 8), generator=rng)
    torch.testing.assert_close(b.x0, augmented)
    torch.testing.assert_close(b.x, augmented + sig.view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(b.augment_labels, aug_labels)
    torch.testing.assert_close(plain.sigma, b.sigma)


def test_online_augmentation_needs_a_network_with_augment_dim():
    pipe, warnings = online_augmentation(0.12, tiny_edm(augment_dim=9))
    assert isinstance(pipe, AugmentPipe) and pipe.p == 0.12 and warnings == []
    assert online_augmentation(0.0, tiny_edm(augment_dim=9)) == (None, [])
    assert online_augmentation(0.0, MLPDenoiser(dim=2)) == (None, [])
    for net in (tiny_edm(augment_dim=0), MLPDenoiser(dim=2)):
        pipe, warnings = online_augmentation(0.12, net)
        assert pipe is None and len(warnings) == 1 and "online.augment_p" in warnings[0]
