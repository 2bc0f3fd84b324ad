"""The run directory's files (simcli.rundir): atomic writes, states and generator snapshots, the metrics log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from simcli.errors import UsageError
from simcli.rundir.atomic import atomic_write, remove_stale_temp_files, write_bytes_atomic, write_json_atomic
from simcli.rundir.metrics import METRICS_FILE, append_record, read_records, truncate_after
from simcli.rundir.snapshots import (
    GENERATOR_FORMAT,
    kimg_tag,
    list_generators,
    list_states,
    load_generator_file,
    load_latest_state,
    prune_states,
    resolve_generator_path,
    save_generator,
    save_state,
)


def hidden_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new but unfin")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert hidden_files(tmp_path) == []


def test_a_successful_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")

    def private_writer(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"new")
        os.close(fd)

    atomic_write(target, private_writer)
    assert target.read_bytes() == b"new" and hidden_files(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_bytes_and_json_helpers(tmp_path):
    write_bytes_atomic(tmp_path / "b", b"\x00\x01")
    write_json_atomic(tmp_path / "j.json", {"a": [1, 2.5, None]})
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    text = (tmp_path / "j.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == {"a": [1, 2.5, None]}


def test_remove_stale_temp_files(tmp_path):
    stale = [".config.json.tmp-123", ".state-0000000.320.pt.tmp-9"]
    kept = [".hidden", "keep.tmp-1", "config.json"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.tmp-5").mkdir()  # only files go
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".dir.tmp-5"])
    assert remove_stale_temp_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------- states


def test_kimg_tag_format_and_order():
    assert kimg_tag(640) == "0000000.640"
    assert kimg_tag(12_345_678) == "0012345.678"
    counts = [0, 5, 640, 999, 1000, 10_000, 128_000, 12_345_678, 9_999_999_999]
    tags = [kimg_tag(n) for n in counts]
    assert sorted(tags) == tags and len(set(tags)) == len(tags)
    assert {len(t) for t in tags} == {11}


def test_save_and_list_states(tmp_path):
    for n in (640, 320, 10_000):
        path = save_state(tmp_path, n, {"step": n, "w": torch.full((2,), float(n))})
        assert path.name == f"state-{kimg_tag(n)}.pt"
    for name in ("state-abc.pt", "state-0000000.320.pt.bak", "generator-0000000.320.safetensors"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in list_states(tmp_path)] == [
        "state-0000000.320.pt", "state-0000000.640.pt", "state-0000010.000.pt",
    ]
    assert list_states(tmp_path / "missing") == []


def test_load_latest_state_falls_back_past_a_corrupt_newest(tmp_path):
    save_state(tmp_path, 320, {"step": 10, "w": torch.arange(3.0)})
    save_state(tmp_path, 640, {"step": 20, "w": torch.arange(3.0) * 2})
    newest = save_state(tmp_path, 960, {"step": 30})
    newest.write_bytes(newest.read_bytes()[:40])  # truncated by a crash
    state, path, warnings = load_latest_state(tmp_path)
    assert path.name == "state-0000000.640.pt" and state["step"] == 20
    assert torch.equal(state["w"], torch.tensor([0.0, 2.0, 4.0]))
    assert len(warnings) == 1 and newest.name in warnings[0]


def test_load_latest_state_none(tmp_path):
    assert load_latest_state(tmp_path) is None
    (tmp_path / "state-0000000.320.pt").write_bytes(b"garbage")
    assert load_latest_state(tmp_path) is None


def test_states_refuse_arbitrary_objects(tmp_path):
    """States load with weights_only=True: a pickled object of another class is not executed but skipped."""
    save_state(tmp_path, 320, {"step": 1})
    torch.save({"obj": Path("x")}, tmp_path / "state-0000000.640.pt")
    state, path, warnings = load_latest_state(tmp_path)
    assert state == {"step": 1} and len(warnings) == 1


def test_prune_states_keeps_the_newest(tmp_path):
    for n in (320, 640, 960, 1280):
        save_state(tmp_path, n, {"step": n})
    prune_states(tmp_path, keep=2)
    assert [p.name for p in list_states(tmp_path)] == ["state-0000000.960.pt", "state-0000001.280.pt"]
    prune_states(tmp_path, keep=5)
    assert len(list_states(tmp_path)) == 2


# ---------------------------------------------------------------------------------------------- generator snapshots


def test_generator_round_trip(tmp_path):
    weights = {"a.weight": torch.randn(3, 4).t(), "a.bias": torch.arange(4.0), "n": torch.tensor([1, 2], dtype=torch.int64)}
    metadata = {"spec": {"seed": 3, "training": {"batch_size": 32}}, "architecture": {"kind": "mlp"},
                "images_seen": 640, "ema_beta": 0.5, "note": None, "names": ["x", "y"]}
    path = tmp_path / "generator-0000000.640.safetensors"
    save_generator(path, weights, metadata)
    tensors, meta = load_generator_file(path)
    assert tensors.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype
    assert meta == metadata  # decoded back from JSON, without the format key
    assert hidden_files(tmp_path) == []


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="not a simcli generator snapshot") as info:
        load_generator_file(path)
    assert "'pt'" in info.value.message
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UsageError, match="format None"):
        load_generator_file(path)


def test_corrupt_generator_files_are_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(UsageError, match="not a readable generator snapshot"):
        load_generator_file(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": GENERATOR_FORMAT, "spec": "{broken"})
    with pytest.raises(UsageError, match="corrupt metadata"):
        load_generator_file(path)


def test_resolve_generator_path(tmp_path):
    for n in (320, 1280, 640):
        save_generator(tmp_path / f"generator-{kimg_tag(n)}.safetensors", {"w": torch.zeros(1)}, {})
    (tmp_path / "generator-latest.safetensors").write_text("x")  # not a snapshot name
    assert resolve_generator_path(tmp_path).name == "generator-0000001.280.safetensors"
    assert [p.name for p in list_generators(tmp_path)][0] == "generator-0000000.320.safetensors"
    one = tmp_path / "generator-0000000.320.safetensors"
    assert resolve_generator_path(one) == one
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no generator snapshot"):
        resolve_generator_path(empty)
    with pytest.raises(UsageError, match="generator not found"):
        resolve_generator_path(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------------- metrics log


def test_metrics_append_and_read(tmp_path):
    assert read_records(tmp_path) == []
    records = [{"step": s, "loss": s / 10} for s in (5, 10, 15)]
    for r in records:
        append_record(tmp_path, r)
    assert read_records(tmp_path) == records
    assert (tmp_path / METRICS_FILE).read_text().count("\n") == 3


def test_a_half_written_last_line_is_skipped(tmp_path):
    append_record(tmp_path, {"step": 5})
    append_record(tmp_path, {"step": 10})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('[1, 2]\n{"step": 15, "lo')  # a non-record line, then a killed writer
    assert read_records(tmp_path) == [{"step": 5}, {"step": 10}]


def test_truncate_after_drops_later_records_and_the_broken_line(tmp_path):
    for s in (5, 10, 15, 20):
        append_record(tmp_path, {"step": s, "kind": "status"})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 25, "lo')
    truncate_after(tmp_path, 10)
    assert [r["step"] for r in read_records(tmp_path)] == [5, 10]
    append_record(tmp_path, {"step": 15, "kind": "status"})  # resumes on a clean line
    assert [r["step"] for r in read_records(tmp_path)] == [5, 10, 15]
    assert (tmp_path / METRICS_FILE).read_text().splitlines()[-1] == '{"step": 15, "kind": "status"}'
    truncate_after(tmp_path / "missing", 3)  # no log yet: nothing to do
