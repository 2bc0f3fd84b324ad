"""The teacher's guidance by a second network (spec.guide, `--guide NAME --guidance W`), set up before the run
directory is touched: the guide is loaded like a teacher, checked against it, and the teacher's denoiser becomes
D_guide + w (D - D_guide) (simcli.nets.guided). The generator and the online model copy the teacher's own network."""

from __future__ import annotations

import dataclasses

from simcli.config.spec import RunSpec
from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.guided import GuidedDenoiser
from simcli.store.download import DownloadProgressFn
from simcli.teachers.registry import Teacher, load_edm_network


def guided_teacher(spec: RunSpec, teacher: Teacher, on_download: DownloadProgressFn | None = None) -> Teacher:
    """The teacher guided as spec.guide says (unchanged without a guide). One-line UsageErrors: a weight without a
    guide, a guide with weight 1, a teacher that is not an EDM or EDM2 network, a guide whose samples differ from the
    teacher's (shape, latent space, noise range) or whose labels do not fit."""
    guide = spec.guide
    if guide.network is None:
        if guide.weight != 1.0:
            raise UsageError(f"--guidance {guide.weight:g} given without a guide network",
                             hint="add --guide NAME (e.g. an unconditional EDM2 network), or drop --guidance")
        return teacher
    if teacher.kind != "edm":
        raise UsageError(f"--guide applies to EDM and EDM2 teachers, not '{teacher.display_name}'",
                         hint="text-to-image teachers are guided by text.guidance_scale; drop --guide")
    if guide.weight == 1.0:
        raise UsageError("--guide given with guidance weight 1, which is the teacher alone",
                         hint="give --guidance W above 1 (EDM2's presets use 1.2 to 2.9)")
    loaded = load_edm_network(guide.network, on_download)
    check_guide(teacher, loaded)
    denoiser = GuidedDenoiser(teacher.denoiser, loaded.denoiser, guide.weight)
    display = f"{teacher.display_name} guided by {loaded.display_name} (w={guide.weight:g})"
    return dataclasses.replace(teacher, denoiser=denoiser, display_name=display)


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
