"""The teacher's guidance in a distillation (spec.guide), set up before the run directory is touched
(simcli.teachers.guidance does the guiding)."""

from __future__ import annotations

from simcli.config.spec import RunSpec
from simcli.store.download import DownloadProgressFn
from simcli.teachers.guidance import check_guidance_weight, guide_teacher
from simcli.teachers.registry import Teacher


def guided_teacher(spec: RunSpec, teacher: Teacher, on_download: DownloadProgressFn | None = None) -> Teacher:
    """The teacher guided as spec.guide says (unchanged without a guide; a weight without a guide is refused)."""
    check_guidance_weight(spec.guide.network, spec.guide.weight)
    if spec.guide.network is None:
        return teacher
    return guide_teacher(teacher, spec.guide.network, spec.guide.weight, on_download)
