"""The embedding store's build inside a text-to-image run (issue 16), on the CPU-sized PixArt-alpha pipeline: a stop
request ends it at the next encoder batch with one line saying how many prompts are stored, the same command goes on
from there to the same bytes, a run waiting on another process's build names it, and a write the OS refuses while
building is one line naming the file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")
fcntl = pytest.importorskip("fcntl")

import simcli.data.embedding_build as embedding_build  # noqa: E402
from simcli.cli.app import app  # noqa: E402
from simcli.data.prompts import read_prompt_file  # noqa: E402
from simcli.distill.events import EmbeddingProgress, EmbeddingWait  # noqa: E402
from simcli.distill.stop import StopRequest  # noqa: E402
from simcli.distill.text_setup import RunPrompts, store_directory  # noqa: E402
from simcli.errors import Stopped  # noqa: E402
from simcli.teachers.pipeline_source import DiffusersPipelineSource  # noqa: E402
from simcli.teachers.registry import load_teacher  # noqa: E402
from simcli.world import World  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402
from tests.integration.test_text_to_image import spec_for  # noqa: E402
from tests.unit.test_embedding_build import files, hold_lock  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return write_tiny_pixart(tmp_path_factory.mktemp("pixart") / "pipe")


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a photo of a red cat number {i}\n" for i in range(200)))
    return path


@pytest.fixture()
def setup(tmp_path, monkeypatch, pipeline, prompts):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    spec = spec_for(pipeline, prompts, 2, "text.encode_batch_size=16")
    teacher = load_teacher(spec.teacher)
    source = teacher.pipeline
    return spec, teacher, store_directory(read_prompt_file(prompts).sha256, source.encoder_id(), source.max_tokens)


def test_a_stop_ends_the_store_build_at_the_next_batch_and_the_same_command_goes_on(tmp_path, monkeypatch, setup):
    spec, teacher, store = setup
    stop, events = StopRequest(), []

    def on_event(event):
        events.append((event, getattr(stop, "activity", None)))
        if isinstance(event, EmbeddingProgress) and event.done == 48:
            stop.request(signal.SIGINT)  # Ctrl-C during the fourth batch

    with pytest.raises(Stopped) as info:
        RunPrompts.prepare(spec, teacher, World(), CPU, on_event, stop)
    assert info.value.exit_code == 130
    assert info.value.message == (f"stopped by SIGINT while embedding the prompts: 48 of 200 prompts are stored in "
                                  f"{store}; run the same command again to finish the store (from where it stands) "
                                  "and start the run")
    assert [(e.done, a) for e, a in events] == [(16, "batch of prompts"), (32, "batch of prompts"), (48, "batch of prompts")]
    assert getattr(stop, "activity", None) in (None, "iteration")  # given back once the build ended
    events.clear()
    RunPrompts.prepare(spec, teacher, World(), CPU, events.append, StopRequest())
    assert [e.done for e in events if isinstance(e, EmbeddingProgress)] == list(range(64, 200, 16)) + [200]
    resumed = files(store)
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache-straight"))
    RunPrompts.prepare(spec, teacher, World(), CPU, events.append)
    assert files(store_directory(*_key(spec, teacher))) == resumed  # the same bytes as a build never stopped


def _key(spec, teacher) -> tuple[str, str, int]:
    return read_prompt_file(spec.text.prompts).sha256, teacher.pipeline.encoder_id(), teacher.pipeline.max_tokens


def test_a_run_waiting_on_another_build_names_it_and_stops_when_asked(monkeypatch, setup):
    spec, teacher, store = setup
    monkeypatch.setattr(embedding_build, "LOCK_POLL_S", 0.01)
    loads = []
    real = DiffusersPipelineSource.encoder
    monkeypatch.setattr(DiffusersPipelineSource, "encoder", lambda *a, **k: loads.append(1) or real(*a, **k))
    holder = hold_lock(store, {"pid": 4242, "host": "node7", "since": "2026-12-07T10:00:00+00:00"})
    stop, events = StopRequest(), []

    def on_event(event):
        events.append(event)
        assert stop.activity == "wait for the other process's build"  # what a Ctrl-C's acknowledgement names
        stop.request(signal.SIGTERM)

    with pytest.raises(Stopped) as info:
        RunPrompts.prepare(spec, teacher, World(), CPU, on_event, stop)
    holder.close()
    who = "PID 4242 on host node7 (since 2026-12-07T10:00:00+00:00)"
    (wait,) = events
    assert isinstance(wait, EmbeddingWait) and (wait.store, wait.holder, wait.stored, wait.total) == (str(store), who, 0, 200)
    assert info.value.exit_code == 143 and info.value.message == (
        f"stopped by SIGTERM while waiting for {who} to build the embedding store {store} (0 of 200 prompts stored so "
        "far); this process wrote nothing; run the same command again to finish the store (from where it stands) and "
        "start the run")
    assert loads == [] and sorted(p.name for p in store.iterdir()) == [".build.lock"]  # no encoder loaded, nothing written


def test_cli_a_store_write_the_os_refuses_is_one_line_naming_the_file(tmp_path, setup, pipeline, prompts):
    """A directory where the null embedding's temporary file goes: safetensors said SafetensorError ("Is a directory
    (os error 21)"), which ended in 'internal error'."""
    _, _, store = setup
    (store / f".null.safetensors.tmp-{os.getpid()}").mkdir(parents=True)
    result = CliRunner().invoke(app, ["distill", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts),
                                      "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in result.stderr
    assert f"cannot write {store / 'null.safetensors'}: {os.strerror(21)}" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched
