"""Guidance by a second network (simcli.nets.guided): D_guide + w (D - D_guide), an unconditional guide getting no
labels, and the checks that refuse a guide that cannot guide the teacher."""

from __future__ import annotations

import pytest
import torch

from simcli.config.spec import RunSpec
from simcli.distill.guidance import guided_teacher
from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.guided import GuidedDenoiser, guided_denoised
from simcli.teachers.guidance import check_guide, teacher_network
from simcli.teachers.registry import Teacher
from tests.helpers.edm2_pickle_writer import tiny_edm2


class Recorder(Denoiser):
    """D(x) = scale * x, remembering the labels it was given."""

    def __init__(self, scale: float, label_dim: int):
        super().__init__()
        self.scale, self.label_dim, self.sample_shape, self.seen = scale, label_dim, (2,), []

    def forward(self, x, sigma, class_labels=None, **kw):
        self.seen.append(class_labels)
        return self.scale * x


def test_guided_output_is_the_guide_moved_towards_the_teacher_by_w():
    teacher, guide = Recorder(2.0, 3), Recorder(0.5, 0)
    x, labels = torch.randn(4, 2, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    out = GuidedDenoiser(teacher, guide, 1.7)(x, torch.ones(4), labels)
    assert torch.allclose(out, 0.5 * x + 1.7 * (2.0 * x - 0.5 * x), rtol=1e-12, atol=0)
    assert teacher.seen[0] is labels and guide.seen == [None]  # an unconditional guide gets no label
    assert torch.equal(guided_denoised(torch.ones(2), torch.zeros(2), 1.0), torch.ones(2))  # w = 1: the teacher


def test_a_conditional_guide_gets_the_labels_and_edm2_networks_guide_exactly():
    net, _ = tiny_edm2(seed=0)
    guide, _ = tiny_edm2(seed=1)
    x, sigma, labels = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0]), torch.eye(10)[[2, 7]]
    out = GuidedDenoiser(net, guide, 2.5)(x, sigma, labels)
    d, g = net(x, sigma, labels), guide(x, sigma, labels)
    assert torch.equal(out, torch.lerp(g, d, 2.5))
    wrapped = GuidedDenoiser(net, guide, 2.5)
    assert teacher_network(wrapped) is net and teacher_network(net) is net
    wrapped.use_fp16 = False
    assert net.use_fp16 is False and guide.use_fp16 is False


def _teacher(net: Denoiser, name: str, latents: object = None) -> Teacher:
    architecture = {"kind": "edm", "class_name": "Precond", "init_kwargs": {}}
    if latents is not None:
        architecture["latents"] = latents
    return Teacher(name, "edm", name, net, architecture)


def test_guides_that_cannot_guide_are_refused_in_one_line():
    teacher = _teacher(tiny_edm2()[0], "t", latents={"vae": "a"})
    cases = [
        (_teacher(tiny_edm2(img_channels=3)[0], "g", latents={"vae": "a"}), r"it makes \(3, 8, 8\) samples"),
        (_teacher(tiny_edm2(label_dim=5)[0], "g", latents={"vae": "a"}), "it takes 5 classes, the teacher 10"),
        (_teacher(tiny_edm2()[0], "g", latents={"vae": "b"}), "another latent space"),
        (_teacher(tiny_edm2()[0], "g"), "one of them works in latents, the other in pixels"),
    ]
    for guide, match in cases:
        with pytest.raises(UsageError, match=match) as info:
            check_guide(teacher, guide)
        assert "\n" not in info.value.message
    check_guide(teacher, _teacher(tiny_edm2(label_dim=0)[0], "g", latents={"vae": "a"}))  # unconditional: fine


def test_guidance_settings_without_a_guide_or_on_other_teachers_are_refused():
    teacher = _teacher(tiny_edm2()[0], "t")
    spec = RunSpec.model_validate({"teacher": "t", "training": {"duration_steps": 1}, "guide": {"weight": 2.0}})
    with pytest.raises(UsageError, match="--guidance 2 given without a guide network"):
        guided_teacher(spec, teacher)
    assert guided_teacher(RunSpec.model_validate({"teacher": "t", "training": {"duration_steps": 1}}), teacher) is teacher
    spec = RunSpec.model_validate({"teacher": "t", "training": {"duration_steps": 1}, "guide": {"network": "g.pkl", "weight": 2.0}})
    with pytest.raises(UsageError, match="--guide applies to EDM and EDM2 teachers, not 'digits'"):
        guided_teacher(spec, Teacher("digits", "digits", "digits", teacher.denoiser, {}))
    spec = RunSpec.model_validate({"teacher": "t", "training": {"duration_steps": 1}, "guide": {"network": "g.pkl"}})
    with pytest.raises(UsageError, match="guidance weight 1, which is the teacher alone"):
        guided_teacher(spec, teacher)
