"""`distill --dry-run` plans EDM teachers without their weights (issue 18, item 4): the official names from the
catalog's records (nothing downloaded), simcli teacher files from their safetensors metadata; local EDM pickles stay
unplanned (simcli.teachers.architecture_records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.config.resolve import resolve_spec
from simcli.distill.memory_plan import dry_run_architecture
from simcli.errors import UsageError
from simcli.nets.registry import build_edm_network, meta_network
from simcli.rundir.network_file import TEACHER_FORMAT, save_network_file
from simcli.teachers.architecture_records import native_file_architecture, teacher_architecture_record
from simcli.teachers.edm_catalog import EDM_TEACHERS, edm_network_record
from simcli.teachers.registry import describe_teacher_name, load_teacher
from tests.helpers.tiny_edm import TINY_DDPMPP, write_tiny_edm

DATA = Path(__file__).resolve().parents[1] / "data"  # the listing kept with the tests (tests/unit/test_edm_nets.py)

# Parameters of the official networks, edm-spec section 2 (and 0.6), written out here, not taken from the catalog.
OFFICIAL_PARAMETERS = {
    "edm-cifar10": 55_733_891, "edm-cifar10-cond": 55_735_299, "edm-cifar10-ve": 56_397_827,
    "edm-cifar10-cond-ve": 56_400_643, "edm-ffhq64": 61_805_571, "edm-ffhq64-ve": 62_761_091,
    "edm-afhqv2-64": 61_805_571, "edm-afhqv2-64-ve": 62_761_091, "edm-imagenet64": 295_899_267,
}


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_catalog_name_is_covered():
    assert set(OFFICIAL_PARAMETERS) == set(EDM_TEACHERS)


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMETERS))
def test_official_record_builds_on_meta_with_the_official_parameter_count(name):
    record = teacher_architecture_record(name)
    assert record == edm_network_record(EDM_TEACHERS[name])
    assert record["kind"] == "edm" and record["class_name"] == "EDMPrecond"  # every edm-*.pkl (edm-spec 0.1)
    net = meta_network(record, name)
    assert all(p.is_meta for p in net.parameters())
    assert _parameters(net) == OFFICIAL_PARAMETERS[name]
    kwargs, entry = record["init_kwargs"], EDM_TEACHERS[name]
    assert (kwargs["label_dim"], kwargs["img_resolution"], kwargs["dropout"]) == (
        entry.label_dim, entry.resolution, entry.dropout)


def test_cifar10_record_matches_the_upstream_state_dict_and_kwargs():
    """Names, shapes and total size of tests/data/edm-cifar10-ddpmpp-state-dict.tsv (425 tensors), and the
    _init_kwargs edm-spec 2.1 prints for the CIFAR-10 uncond VP file, in the same order."""
    rows = [line.split("\t") for line in (DATA / "edm-cifar10-ddpmpp-state-dict.tsv").read_text().splitlines() if line]
    upstream = {name: json.loads(shape) for name, shape in rows}
    state = meta_network(edm_network_record(EDM_TEACHERS["edm-cifar10"])).state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == upstream
    assert len(upstream) == 425
    assert sum(torch.Size(s).numel() for s in upstream.values()) == 55_733_891 + 32  # parameters + 8 filters of 2x2
    assert list(edm_network_record(EDM_TEACHERS["edm-cifar10"])["init_kwargs"].items()) == [
        ("model_type", "SongUNet"), ("embedding_type", "positional"), ("encoder_type", "standard"),
        ("decoder_type", "standard"), ("channel_mult_noise", 1), ("resample_filter", [1, 1]), ("model_channels", 128),
        ("channel_mult", [2, 2, 2]), ("augment_dim", 9), ("dropout", 0.13), ("use_fp16", False),
        ("img_resolution", 32), ("img_channels", 3), ("label_dim", 0)]
    imagenet = edm_network_record(EDM_TEACHERS["edm-imagenet64"])["init_kwargs"]
    assert imagenet == {"model_type": "DhariwalUNet", "model_channels": 192, "channel_mult": [1, 2, 3, 4],
                        "dropout": 0.1, "use_fp16": True, "img_resolution": 64, "img_channels": 3, "label_dim": 1000}


def _no_download(monkeypatch):
    """Any download or teacher load fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run tried to download or load the teacher")

    monkeypatch.setattr("simcli.teachers.edm_files.ensure_teacher_file", refuse)
    monkeypatch.setattr("simcli.store.download.ensure_file", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setattr("simcli.teachers.edm_pickle.load_edm_pickle", refuse)
    monkeypatch.setattr("simcli.teachers.native.load_native_teacher", refuse)
    monkeypatch.setattr("simcli.rundir.network_file.load_file", refuse)  # tensor data of a network file


def _dry_run_memory(*args: str) -> dict | None:
    result = CliRunner().invoke(app, ["distill", *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["memory"]


def test_cli_dry_run_of_edm_cifar10_plans_memory_without_downloading(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SIMCLI_CACHE", str(cache))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_download(monkeypatch)
    memory = _dry_run_memory("--teacher", "edm-cifar10", "--gpu-memory", "80")
    assert memory is not None
    assert (memory["parameters"], memory["buffers"]) == (55_733_891, 32)
    assert memory["per_process_gib"]["teacher"] == pytest.approx(4 * (55_733_891 + 32) / 2**30)
    assert memory["device_gib"] == 80 and memory["per_process_gib"]["activations"] > 0
    assert list(cache.iterdir()) == []  # nothing fetched, not even a partial file


def test_digits_dry_run_is_planned_from_its_metadata_with_the_loaded_teachers_count(monkeypatch):
    loaded = load_teacher("digits")
    count = _parameters(loaded.denoiser)
    _no_download(monkeypatch)  # from here on, no tensor of the file may be read
    spec, _ = resolve_spec("digits", describe_teacher_name)
    record, _ = dry_run_architecture(spec)
    assert record == loaded.architecture
    memory = _dry_run_memory("--teacher", "digits")
    assert memory["parameters"] == count > 100_000
    assert memory["buffers"] == sum(t.numel() for t in loaded.denoiser.state_dict().values()) - count


def _tiny_teacher_file(path: Path, fmt: str = TEACHER_FORMAT) -> tuple[dict, int]:
    architecture = {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": {**TINY_DDPMPP, "label_dim": 0}}
    net = build_edm_network("EDMPrecond", architecture["init_kwargs"])
    save_network_file(path, net.state_dict(), {"architecture": architecture}, fmt)
    return architecture, _parameters(net)


def test_a_teacher_file_is_planned_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    architecture, count = _tiny_teacher_file(path)
    _no_download(monkeypatch)
    spec, _ = resolve_spec(str(path), describe_teacher_name, sets=["training.dropout=0.25"])
    record, _ = dry_run_architecture(spec)
    assert record["init_kwargs"]["dropout"] == 0.25  # as build_networks copies it with training.dropout
    assert {**record, "init_kwargs": {**record["init_kwargs"], "dropout": 0.13}} == architecture
    assert _parameters(meta_network(record)) == count


def test_a_file_of_another_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "g.safetensors"
    _tiny_teacher_file(path, fmt="simcli-generator/1")
    with pytest.raises(UsageError, match="is not a simcli teacher file"):
        native_file_architecture(path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UsageError, match="is not a readable teacher file"):
        native_file_architecture(tmp_path / "junk.safetensors")


def test_a_local_edm_pickle_stays_unplanned(tmp_path):
    path = write_tiny_edm(tmp_path / "tiny.pkl")
    assert teacher_architecture_record(str(path)) is None
    result = CliRunner().invoke(app, ["distill", "--teacher", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "memory plan: not available for this teacher without loading its weights" in result.stdout
