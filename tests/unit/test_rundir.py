"""The run directory's files (simcli.rundir): atomic writes, states and generator snapshots, the metrics log."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from simcli.errors import RunFailed, UsageError, WriteFailed
from simcli.rundir.atomic import atomic_write, remove_stale_temp_files, write_bytes_atomic, write_json_atomic
from simcli.rundir.layout import METRICS_FILE, kimg_tag, list_generators, list_states
from simcli.rundir.metrics import Truncation, append_record, read_records, truncate_after
from simcli.rundir.network_file import TEACHER_FORMAT, network_file_bytes, save_network_file
from simcli.rundir.snapshots import (
    GENERATOR_FORMAT,
    load_generator_file,
    load_latest_state,
    move_aside,
    prune_generators,
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
    (tmp_path / ".dir.tmp-5").mkdir()  # only files go, and sharded states' folders
    (tmp_path / ".state-0000000.320.dcp.tmp-7").mkdir()
    (tmp_path / ".state-0000000.320.dcp.tmp-7" / "__0_0.distcp").write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([*stale, ".state-0000000.320.dcp.tmp-7"])
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


# ---------------------------------------------------------------------------------------------- failed writes (issue 9)

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def fail_midway(monkeypatch, match: str = "") -> None:
    """Path.write_bytes/write_text write half of their data into files whose name contains `match`, then raise ENOSPC."""
    real_bytes, real_text = pathlib.Path.write_bytes, pathlib.Path.write_text

    def write_bytes(self, data):
        if match not in self.name:
            return real_bytes(self, data)
        real_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_text(self, data, *args, **kwargs):
        if match not in self.name:
            return real_text(self, data, *args, **kwargs)
        real_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


@pytest.mark.parametrize("writer", ["bytes", "json", "state", "generator", "grid"])
def test_a_full_disk_is_one_write_failed_naming_the_file_and_the_good_file_stays(tmp_path, monkeypatch, writer):
    from simcli.sampling.images import save_grid

    names = {"bytes": "b.bin", "json": "c.json", "state": f"state-{kimg_tag(640)}.pt",
             "generator": f"generator-{kimg_tag(640)}.safetensors", "grid": "grid.png"}
    target = tmp_path / names[writer]
    write = {
        "bytes": lambda: write_bytes_atomic(target, b"new" * 100),
        "json": lambda: write_json_atomic(target, {"new": list(range(50))}),
        "state": lambda: save_state(tmp_path, 640, {"w": torch.ones(1000)}),
        "generator": lambda: save_generator(target, {"w": torch.ones(1000)}, {"step": 2}),
        "grid": lambda: save_grid(np.zeros((4, 8, 8, 1), np.uint8), target, 2),
    }[writer]
    write()
    good = target.read_bytes()
    if writer == "state":  # torch.save writes through a Python file: make its writes fail
        import simcli.rundir.snapshots as snapshots

        def torch_save(obj, f):
            f.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(snapshots.torch, "save", torch_save)
    else:
        fail_midway(monkeypatch, ".tmp-")
    with pytest.raises(WriteFailed) as info:
        write()
    err = info.value
    assert err.message.startswith(f"cannot write {target}: No space left on device"), err.message
    assert isinstance(err, RunFailed) and err.exit_code == 1
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == str(target)  # old handlers still work
    assert target.read_bytes() == good
    assert hidden_files(tmp_path) == []


def test_a_failed_rename_is_a_write_failed_too(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})

    def no_rename(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(WriteFailed, match=f"cannot write {target}: Input/output error"):
        write_json_atomic(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1} and hidden_files(tmp_path) == []


def test_a_failed_append_to_the_metrics_log_names_it(tmp_path, monkeypatch):
    import simcli.rundir.metrics as metrics

    append_record(tmp_path, {"step": 1})

    def full_open(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics, "open", full_open, raising=False)
    with pytest.raises(WriteFailed, match=f"cannot write {tmp_path / METRICS_FILE}: No space left on device"):
        append_record(tmp_path, {"step": 2})


# ---------------------------------------------------------------------------------------------- metrics rewrite (issue 9)


def test_truncate_after_reports_what_it_drops(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 5}\nGARBAGE\n{"step": 10}\n[1, 2]\n{"step": 15}\n{"step": 20}\n{"step": 25, "lo')
    dropped = truncate_after(tmp_path, 15)
    assert dropped == Truncation(unreadable_lines=(2, 4, 7), later_records=1)
    assert path.read_text() == '{"step": 5}\n{"step": 10}\n{"step": 15}\n'
    message = dropped.describe(15)
    assert message.startswith("metrics.jsonl: dropped 3 unreadable lines (lines 2, 4, 7: no JSON record")
    assert "1 record after iteration 15" in message and "\n" not in message
    assert Truncation().describe(3) is None
    one = Truncation(unreadable_lines=(9,)).describe(3)
    assert one.startswith("metrics.jsonl: dropped 1 unreadable line (line 9:") and "record after" not in one


def test_truncate_after_leaves_a_clean_log_alone(tmp_path):
    for s in (5, 10):
        append_record(tmp_path, {"step": s})
    before = (tmp_path / METRICS_FILE).stat()
    assert truncate_after(tmp_path, 10) == Truncation()
    after = (tmp_path / METRICS_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert truncate_after(tmp_path / "missing", 3) == Truncation()


def test_truncate_after_ends_a_last_line_that_lost_its_newline(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 5}\n{"step": 10}')
    assert truncate_after(tmp_path, 10) == Truncation()
    assert (tmp_path / METRICS_FILE).read_text() == '{"step": 5}\n{"step": 10}\n'


@pytest.mark.parametrize("how", ["write", "rename"])
def test_a_kill_during_the_rewrite_leaves_metrics_unchanged(tmp_path, monkeypatch, how):
    path = tmp_path / METRICS_FILE
    original = '{"step": 5}\nGARBAGE\n{"step": 10}\n{"step": 15}\n{"step": 20, "lo'
    path.write_text(original)
    if how == "write":
        fail_midway(monkeypatch)  # the rewrite dies halfway through writing, whatever file it writes
    else:
        def no_rename(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left on device"):
        truncate_after(tmp_path, 10)
    monkeypatch.undo()
    assert path.read_text() == original
    assert hidden_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------- pruning, moving aside


def test_prune_generators_keeps_the_newest_and_the_best(tmp_path):
    for n in (320, 640, 960):
        save_generator(tmp_path / f"generator-{kimg_tag(n)}.safetensors", {"w": torch.zeros(1)}, {})
    save_generator(tmp_path / "generator-best.safetensors", {"w": torch.zeros(1)}, {})
    assert prune_generators(tmp_path, None) == [] and len(list_generators(tmp_path)) == 3
    removed = prune_generators(tmp_path, 1)
    assert [p.name for p in removed] == ["generator-0000000.320.safetensors", "generator-0000000.640.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator-0000000.960.safetensors", "generator-best.safetensors"]


def test_move_aside_keeps_the_files_in_a_discarded_folder(tmp_path):
    a, b = tmp_path / "state-0000000.320.pt", tmp_path / "metrics.jsonl"
    a.write_bytes(b"garbage")
    b.write_text("{}\n")
    folder = move_aside(tmp_path, [a, b])
    assert folder.parent == tmp_path and folder.name.startswith("discarded-")
    assert (folder / a.name).read_bytes() == b"garbage" and (folder / b.name).read_text() == "{}\n"
    assert not a.exists() and not b.exists()
    again = move_aside(tmp_path, [])  # the same second: a new folder, never a merge
    assert again != folder and again.is_dir()


# ---------------------------------------------------------------------------------------------- reproducible files


def test_network_files_are_byte_reproducible(tmp_path):
    weights = {f"layer{i}.weight": torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(6)}
    metadata = {"spec": {"seed": 3, "training": {"batch_size": 32}}, "architecture": {"kind": "mlp", "layers": 3},
                "sigma_init": 2.5, "step": 20, "images_seen": 640, "score": None, "fid": 1.25}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_network_file(first, weights, metadata, GENERATOR_FORMAT)
    for _ in range(5):  # safetensors alone orders the metadata differently on every call
        save_network_file(second, weights, metadata, GENERATOR_FORMAT)
        assert second.read_bytes() == first.read_bytes()
    assert (len(first.read_bytes()) - 8) % 8 == 0 and int.from_bytes(first.read_bytes()[:8], "little") % 8 == 0
    tensors, meta = load_generator_file(first)
    assert meta == metadata and all(torch.equal(tensors[k], weights[k]) for k in weights)


@pytest.mark.parametrize(("name", "fmt"), [("teacher", TEACHER_FORMAT), ("classifier", "simcli-classifier/1")])
def test_the_shipped_digits_files_are_reproduced_byte_for_byte(name, fmt):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from simcli.assets import asset_path

    path = asset_path(f"digits/{name}.safetensors")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    metadata = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    assert network_file_bytes(load_file(str(path)), metadata, fmt) == path.read_bytes()


def test_the_digits_examples_write_with_simclis_own_writer(tmp_path):
    module_path = Path(__file__).resolve().parents[2] / "examples" / "digits" / "digits_common.py"
    spec = importlib.util.spec_from_file_location("digits_common_under_test", module_path)
    digits_common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits_common)
    weights, metadata = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}, {"b": 1, "a": {"y": 2, "x": [1.5]}}
    digits_common.save_safetensors(weights, tmp_path / "x.safetensors", TEACHER_FORMAT, metadata)
    assert (tmp_path / "x.safetensors").read_bytes() == network_file_bytes(weights, metadata, TEACHER_FORMAT)
