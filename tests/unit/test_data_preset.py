"""`auto` with real data (issue 19): the digits teacher given --data gets the digits-data preset, whose adversarial
settings fit a digits run's length; a preset named on the command line is kept."""

from __future__ import annotations

from simcli.config.presets import PRESETS
from simcli.config.resolve import resolve_spec
from simcli.teachers.registry import describe_teacher_name


def resolve(*, data: str | None = None, preset: str | None = None, method: str | None = None):
    flags = {"data": {"source": data}, "loss": {"method": method}}
    return resolve_spec("digits", describe_teacher_name, preset=preset, flags=flags)


def test_auto_picks_the_data_preset_when_data_is_given():
    spec, provenance = resolve(data="digits-train")
    a = spec.adversarial
    assert provenance["adversarial.generator_freeze_kimg"] == "preset:digits-data"
    # the generator steps and sees the adversarial loss from the start: SiDA's 100/200 kimg outlast a digits run
    assert a.generator_freeze_kimg == 0 and a.generator_start_kimg == 0
    assert a.generator_freeze_kimg * 1000 < spec.training.total_steps * spec.training.batch_size
    # everything else of the digits preset stays
    assert spec.training.batch_size == PRESETS["digits"]["training"]["batch_size"]
    assert spec.evaluation.backend == "digits"


def test_without_data_or_with_a_named_preset_nothing_changes():
    spec, provenance = resolve()
    assert provenance.get("adversarial.generator_freeze_kimg") is None and spec.adversarial.generator_freeze_kimg == 100
    spec, provenance = resolve(data="digits-train", preset="digits")
    assert spec.adversarial.generator_freeze_kimg == 100 and "preset:digits-data" not in provenance.values()


def test_dmd2_with_data_keeps_its_own_term_settings():
    spec, provenance = resolve(data="digits-train", method="dmd2")
    assert spec.online.updates_per_generator_update == 5
    assert (spec.adversarial.online_weight, spec.adversarial.generator_weight) == (1e-2, 3e-3)
