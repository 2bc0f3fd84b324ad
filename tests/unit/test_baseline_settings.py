"""The baselines as their authors ran them: each per-method default against the official code's value, and the
behaviour of the settings in the two update steps (shared dropout mask, eval mode, augment labels).

Official code read: mingyuanzhou/SiD main at 01fbb13 (sid_train.py, training/sid_training_loop.py,
training/sid_loss.py), pkulwj1994/diff_instruct at 0c37389 (README.md, di_train.py, training/di_loss.py,
training/di_training_loop.py), NVlabs/edm at 008a4e5 (train.py, training/training_loop.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

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
    from simcli.distill.steps import score_passes

    teacher = DropoutNet(seed=2).train()
    online = copy.deepcopy(teacher)
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    on, te, _, _ = score_passes(online, teacher, x, torch.ones(8), None, shared_mask=False)
    assert not torch.equal(on, te)
    torch.manual_seed(3)
    on_shared, te_shared, _, _ = score_passes(online, teacher, x, torch.ones(8), None, shared_mask=True)
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
    from simcli.distill.steps import score_passes

    x, sigma = torch.randn(4, 3, 8, 8), torch.full((4,), 0.7)
    torch.manual_seed(0)
    on, te, _, _ = score_passes(online, teacher, x, sigma, None, shared_mask=True)
    assert torch.equal(on, te)
    assert not torch.equal(on, teacher.eval()(x, sigma))


def test_training_dropout_reaches_the_teacher_so_shared_masks_stay_shared():
    """Diff-Instruct's shared-mask step runs the teacher in train mode: with training.dropout (0.05 under the afhq64
    preset, whose pickle says 0.25) the teacher must drop at the online model's rate, or the masks differ."""
    from simcli.distill.events import ignore_event
    from simcli.distill.setup import build_networks
    from simcli.distill.steps import score_passes
    from simcli.nets.unet_block import UNetBlock
    from simcli.teachers.registry import Teacher

    net = tiny_edm(dropout=0.25)
    architecture = {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": {
        "img_resolution": 8, "img_channels": 3, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2],
        "num_blocks": 1, "attn_resolutions": [4], "augment_dim": 9, "dropout": 0.25}}
    spec, _ = resolve_spec("edm-afhqv2-64", describe_teacher_name, flags={"loss": {"method": "di"}})
    assert spec.training.dropout == 0.05 and spec.generator.score_dropout == "shared-mask"
    nets = build_networks(spec, Teacher("t", "edm", "t", net, architecture), Path("unused"), torch.device("cpu"),
                          ignore_event)
    for each in (nets.teacher, nets.generator, nets.online, nets.ema):
        assert {b.dropout for b in each.modules() if isinstance(b, UNetBlock)} == {0.05}
    assert nets.architecture["init_kwargs"]["dropout"] == 0.05
    online = copy.deepcopy(nets.teacher)  # equal weights: a shared mask gives equal outputs
    x, sigma = torch.randn(4, 3, 8, 8), torch.full((4,), 0.7)
    on, te, _, _ = score_passes(online.train(), nets.teacher.train(), x, sigma, None, shared_mask=True)
    assert torch.equal(on, te)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shared_mask_on_cuda():
    from simcli.distill.steps import score_passes

    teacher = tiny_edm().cuda().train()
    online = copy.deepcopy(teacher)
    x, sigma = torch.randn(4, 3, 8, 8, device="cuda"), torch.full((4,), 0.7, device="cuda")
    torch.manual_seed(0)
    on, te, _, _ = score_passes(online, teacher, x, sigma, None, shared_mask=True)
    assert torch.equal(on, te)
    on2, te2, _, _ = score_passes(online, teacher, x, sigma, None, shared_mask=False)
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
    from simcli.distill.noise import draw_sigma

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


# ---------------------------------------------------------------------------------------------- per-dataset presets

# Every official EDM teacher and the preset `auto` picks for it (the NCSN++ "-ve" models share their dataset's).
DATASET_PRESETS = {
    "edm-cifar10": "cifar10", "edm-cifar10-cond": "cifar10", "edm-cifar10-ve": "cifar10", "edm-cifar10-cond-ve": "cifar10",
    "edm-ffhq64": "ffhq64", "edm-ffhq64-ve": "ffhq64",
    "edm-afhqv2-64": "afhq64", "edm-afhqv2-64-ve": "afhq64",
    "edm-imagenet64": "imagenet64",
}


def dataset_values(teacher: str, method: str) -> dict:
    """The settings a dataset preset decides, as `auto` resolves them for the teacher and method."""
    s = method_spec(method, teacher)
    g, o, t = s.generator.optimizer, s.online.optimizer, s.training
    return {
        "batch": t.batch_size, "batch_gpu": t.batch_gpu, "precision": t.precision, "kimg": t.duration_kimg,
        "ema": (s.ema.halflife_kimg, s.ema.rampup_ratio), "lr": (g.lr, o.lr), "betas": (g.beta1, g.beta2, o.beta1, o.beta2),
        "eps": (g.eps, o.eps), "augment": s.online.augment_p, "sid_alpha": s.loss.sid_alpha,
        "status_kimg": s.logging.status_every_kimg, "snapshot_kimg": s.logging.snapshot_every_kimg,
        "dropout": t.dropout,
    }


# SiD's own runs, mingyuanzhou/SiD@01fbb13: run_sid.sh "ffhq64" (lines 100-125), "afhq64-v2" (127-151) and
# "imagenet64-cond" (73-98); sid_train.py:70 (--ema default 0.5 Mimg), :103 (--g_beta1 default 0), :152-153 (Adam
# betas (0 or g_beta1, 0.999), eps 1e-6 with --fp16 1); sid_training_loop.py:131 (EMA ramp-up 0.05); --dropout
# 0.05 (FFHQ, AFHQv2) and 0.1 (ImageNet) for the generator and the fake score.
SID_RUNS = {
    "edm-ffhq64": {
        "batch": 512, "batch_gpu": 32, "precision": "fp16", "kimg": 500_000.0, "ema": (500.0, 0.05),
        "lr": (1e-5, 1e-5), "betas": (0.9, 0.999, 0.0, 0.999), "eps": (1e-6, 1e-6), "augment": 0.15, "sid_alpha": 1.2,
        "status_kimg": 10.0, "snapshot_kimg": 500.0, "dropout": 0.05,
    },
    "edm-afhqv2-64": {
        "batch": 512, "batch_gpu": 32, "precision": "fp16", "kimg": 500_000.0, "ema": (500.0, 0.05),
        "lr": (5e-6, 5e-6), "betas": (0.0, 0.999, 0.0, 0.999), "eps": (1e-6, 1e-6), "augment": 0.15, "sid_alpha": 1.0,
        "status_kimg": 10.0, "snapshot_kimg": 500.0, "dropout": 0.05,
    },
    "edm-imagenet64": {
        "batch": 8192, "batch_gpu": 16, "precision": "fp16", "kimg": 1_000_000.0, "ema": (2000.0, 0.05),
        "lr": (4e-6, 4e-6), "betas": (0.0, 0.999, 0.0, 0.999), "eps": (1e-6, 1e-6), "augment": 0.0, "sid_alpha": 1.2,
        "status_kimg": 20.0, "snapshot_kimg": 1000.0, "dropout": 0.1,
    },
}
SID_RUNS["edm-ffhq64-ve"] = SID_RUNS["edm-ffhq64"]
SID_RUNS["edm-afhqv2-64-ve"] = SID_RUNS["edm-afhqv2-64"]


@pytest.mark.parametrize(("teacher", "preset"), sorted(DATASET_PRESETS.items()))
def test_auto_picks_the_preset_of_the_teachers_dataset(teacher, preset):
    assert describe_teacher_name(teacher) == (teacher, preset)
    for method in ("sim", "sid", "di"):
        _, provenance = resolve_spec(teacher, describe_teacher_name, flags={"loss": {"method": method}})
        assert provenance["training.batch_size"] in {f"preset:{preset}", f"preset:{preset}:{method}"}


def test_every_catalog_teacher_has_its_datasets_preset():
    from simcli.teachers.edm_catalog import EDM_TEACHERS

    assert set(DATASET_PRESETS) == set(EDM_TEACHERS)


def test_a_local_copy_of_an_official_pickle_gets_its_datasets_preset(tmp_path):
    assert describe_teacher_name(str(tmp_path / "edm-afhqv2-64x64-uncond-vp.pkl"))[1] == "afhq64"
    assert describe_teacher_name(str(tmp_path / "edm-imagenet-64x64-cond-adm.pkl"))[1] == "imagenet64"
    assert describe_teacher_name(str(tmp_path / "ffhq-finetuned.pkl"))[1] == "cifar10"  # not an official file name


@pytest.mark.parametrize("teacher", sorted(SID_RUNS))
def test_sid_runs_each_dataset_as_run_sid_sh(teacher):
    assert dataset_values(teacher, "sid") == SID_RUNS[teacher]


@pytest.mark.parametrize("teacher", sorted(SID_RUNS))
@pytest.mark.parametrize("method", ["sim", "di"])
def test_sim_and_di_take_the_datasets_settings_and_sids_lr_but_keep_their_own_optimiser(teacher, method):
    """No SIM or Diff-Instruct run of these datasets is published: the dataset-level settings and SiD's lr, with
    their own Adam betas (0, 0.999), eps 1e-8, augmentation (SIM none, DI di_train.py:76's 0.12; none on ImageNet,
    whose network has no augment_dim) and no SiD alpha."""
    sid = SID_RUNS[teacher]
    own = {"betas": (0.0, 0.999, 0.0, 0.999), "eps": (1e-8, 1e-8), "sid_alpha": 1.2,
           "augment": 0.0 if method == "sim" or teacher == "edm-imagenet64" else 0.12}
    assert dataset_values(teacher, method) == {**sid, **own}


def test_dataset_presets_keep_each_methods_noise():
    for teacher in SID_RUNS:
        assert method_spec("sim", teacher).generator.noise == LognormalNoise(p_mean=-3.5, p_std=2.5)
        assert method_spec("sid", teacher).generator.noise.kind == "karras-uniform"
        assert method_spec("di", teacher).generator.sigma_init == 1.0


@pytest.mark.parametrize("teacher", ["edm-cifar10", "edm-cifar10-cond"])
def test_cifar10_runs_diff_instruct_at_its_readme_batch(teacher):
    # pkulwj1994/diff_instruct@0c37389 README.md:50: di_train.py ... --batch 128 (one V100); lr 1e-5, fp32.
    di = dataset_values(teacher, "di")
    assert (di["batch"], di["lr"], di["precision"], di["augment"]) == (128, (1e-5, 1e-5), "fp32", 0.12)
    # SIM (Table 5) and SiD (run_sid.sh:29, :39-41): batch 256, lr 1e-5, fp32.
    for method in ("sim", "sid"):
        values = dataset_values(teacher, method)
        assert (values["batch"], values["lr"], values["precision"], values["ema"]) == (256, (1e-5, 1e-5), "fp32", (500.0, 0.05))
