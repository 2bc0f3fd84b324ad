"""How presets meet what a user gave: a preset's micro-batch gives way to a smaller batch, and a run directory's
recorded values win over presets and defaults that changed since the run started (config.resolve)."""

from __future__ import annotations

import pytest

from simcli.config.resolve import RECORDED, resolve_spec
from simcli.errors import UsageError
from simcli.teachers.registry import describe_teacher_name


def resolve(teacher: str, **kwargs):
    return resolve_spec(teacher, describe_teacher_name, **kwargs)


@pytest.mark.parametrize(
    ("batch", "processes", "expected"),
    [(8, 1, 8), (4, 1, 4), (48, 1, 24), (8, 2, 4), (96, 2, 24), (512, 1, 32), (512, 4, 32), (36, 1, 18)],
)
def test_a_presets_micro_batch_gives_way_to_a_batch_it_does_not_divide(batch, processes, expected):
    """The ffhq64 preset's 32-image micro-batch: kept where it divides each process's batch, else the largest divisor
    of that batch not above 32, marked in the provenance."""
    spec, provenance = resolve("edm-ffhq64", flags={"training": {"batch_size": batch}}, processes=processes)
    assert spec.training.batch_gpu == expected
    per_process = batch // processes
    assert per_process % expected == 0 and expected <= 32
    adapted = provenance["training.batch_gpu"].endswith("adapted to training.batch_size")
    assert adapted == (per_process % 32 != 0)
    assert provenance["training.batch_gpu"].startswith("preset:ffhq64")


def test_a_micro_batch_the_user_gives_is_never_changed():
    with pytest.raises(UsageError, match=r"batch_gpu \(32\) must divide batch_size \(8\)"):
        resolve("edm-ffhq64", flags={"training": {"batch_size": 8, "batch_gpu": 32}})
    with pytest.raises(UsageError, match=r"batch_gpu \(3\) must divide batch_size \(8\)"):
        resolve("edm-ffhq64", flags={"training": {"batch_size": 8}}, sets=["training.batch_gpu=3"])
    spec, provenance = resolve("edm-ffhq64", flags={"training": {"batch_size": 8, "batch_gpu": 2}})
    assert spec.training.batch_gpu == 2 and provenance["training.batch_gpu"] == "flag"


# ---------------------------------------------------------------------------------------------- recorded values


def old_record(teacher: str = "edm-ffhq64", **kwargs) -> dict:
    """What a run started before the dataset presets recorded: `auto` stood for cifar10 for every EDM teacher."""
    spec, _ = resolve(teacher, preset="cifar10", **kwargs)
    return spec.model_dump(mode="json")


def test_a_recorded_run_keeps_its_values_where_the_auto_preset_changed():
    recorded = old_record(flags={"loss": {"method": "sid"}})
    spec, provenance = resolve("edm-ffhq64", flags={"loss": {"method": "sid"}}, recorded=recorded)
    assert spec.model_dump(mode="json") == recorded
    kept = sorted(k for k, v in provenance.items() if v == RECORDED)
    assert kept == ["generator.optimizer.beta1", "generator.optimizer.eps", "online.augment_p", "online.optimizer.eps",
                    "training.batch_gpu", "training.batch_size", "training.dropout", "training.duration_kimg",
                    "training.precision"]  # what ffhq64 sets differently from cifar10 for SiD
    without, _ = resolve("edm-ffhq64", flags={"loss": {"method": "sid"}})
    assert without.training.batch_size == 512 and spec.training.batch_size == 256


def test_what_the_command_gives_wins_over_the_record():
    recorded = old_record()
    spec, provenance = resolve("edm-ffhq64", flags={"training": {"duration_kimg": 7.0, "batch_size": 64}},
                               sets=["generator.optimizer.lr=2e-5"], recorded=recorded)
    assert (spec.training.duration_kimg, spec.training.batch_size, spec.generator.optimizer.lr) == (7.0, 64, 2e-5)
    assert provenance["training.duration_kimg"] == "flag" and provenance["generator.optimizer.lr"] == "--set"
    assert spec.training.precision == "fp32" and provenance["training.precision"] == RECORDED
    # --steps replaces the recorded --kimg (the two are exclusive)
    spec, _ = resolve("edm-ffhq64", flags={"training": {"duration_steps": 3}}, recorded=recorded)
    assert (spec.training.duration_steps, spec.training.duration_kimg) == (3, None)


def test_an_explicit_preset_or_an_unusable_record_is_not_overridden():
    recorded = old_record()
    spec, provenance = resolve("edm-ffhq64", preset="ffhq64", recorded=recorded)
    assert spec.training.batch_size == 512 and RECORDED not in provenance.values()
    spec, provenance = resolve("edm-ffhq64", recorded={**recorded, "unknown_key": 1})  # a record of another version
    assert spec.training.batch_size == 512 and RECORDED not in provenance.values()
    spec, provenance = resolve("edm-ffhq64", recorded={**recorded, "teacher": "gmm-ring8"})  # the flag's teacher wins
    assert spec.teacher == "edm-ffhq64" and spec.training.batch_size == 256
    same, provenance = resolve("edm-ffhq64", recorded=resolve("edm-ffhq64")[0].model_dump(mode="json"))
    assert same == resolve("edm-ffhq64")[0] and RECORDED not in provenance.values()
