"""A teacher guided by a second network (`--guide NAME --guidance W`, for `distill` and `sample --teacher`): the guide
is loaded like a teacher, checked against it, and the teacher's denoiser becomes D_guide + w (D - D_guide)
(simcli.nets.guided). A distillation's generator and online model copy the teacher's own network (teacher_network)."""

from __future__ import annotations

import dataclasses

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.guided import GuidedDenoiser
from simcli.store.download import DownloadProgressFn
from simcli.teachers.registry import Teacher, load_edm_network


def guide_teacher(teacher: Teacher, guide: str, weight: float, on_download: DownloadProgressFn | None = None
                  ) -> Teacher:
    """The teacher guided by the network `guide` (a name or a .pkl) with weight w. One-line UsageErrors: a teacher
    that is not an EDM or EDM2 network, w = 1, a guide whose samples differ from the teacher's (shape, latent space,
    noise range) or whose labels do not fit."""
    if teacher.kind != "edm":
        raise UsageError(f"--guide applies to EDM and EDM2 teachers, not '{teacher.display_name}'",
                         hint="text-to-image teachers are guided by text.guidance_scale; drop --guide")
    if weight == 1.0:
        raise UsageError("--guide given with guidance weight 1, which is the teacher alone",
                         hint="give --guidance W above 1 (EDM2's presets use 1.2 to 2.9)")
    loaded = load_edm_network(guide, on_download)
    check_guide(teacher, loaded)
    denoiser = GuidedDenoiser(teacher.denoiser, loaded.denoiser, weight)
    display = f"{teacher.display_name} guided by {loaded.display_name} (w={weight:g})"
    return dataclasses.replace(teacher, denoiser=denoiser, display_name=display)


def check_guidance_weight(guide: str | None, weight: float) -> None:
    """A guidance weight other than 1 needs a guide network (one line)."""
    if guide is None and weight != 1.0:
        raise UsageError(f"--guidance {weight:g} given without a guide network",
                         hint="add --guide NAME (e.g. an unconditional EDM2 network), or drop --guidance")


def check_guide(teacher: Teacher, guide: Teacher) -> None:
    """Refuse a guide that cannot guide the teacher: other sample shapes, another latent space (or pixels against
    latents), class labels of another kind (it may be unconditional), another noise range."""
    net, other = teacher.denoiser, guide.denoiser
    problems = []
    if tuple(other.sample_shape) != tuple(net.sample_shape):
        problems.append(f"it makes {tuple(other.sample_shape)} samples, the teacher {tuple(net.sample_shape)}")
    if _latents(guide) != _latents(teacher):
        problems.append("it works in another latent space than the teacher" if _latents(guide) and _latents(teacher)
                        else "one of them works in latents, the other in pixels")
    if other.label_dim not in (0, net.label_dim):
        problems.append(f"it takes {other.label_dim} classes, the teacher {net.label_dim}")
    if (other.sigma_min, other.sigma_max) != (net.sigma_min, net.sigma_max):
        problems.append("its noise range differs from the teacher's")
    if problems:
        raise UsageError(f"guide '{guide.display_name}' cannot guide teacher '{teacher.display_name}': {problems[0]}",
                         hint="guide with a network of the same family and dataset (EDM2: the same img512 or img64)")


def _latents(teacher: Teacher) -> object:
    return (teacher.architecture or {}).get("latents")


def teacher_network(teacher: Denoiser) -> Denoiser:
    """The network the generator and the online model copy: the teacher's own, also when it is guided."""
    return teacher.net if isinstance(teacher, GuidedDenoiser) else teacher
