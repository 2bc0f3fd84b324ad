"""Text-to-image end to end on a CPU-sized PixArt-alpha pipeline (random weights, saved with save_pretrained and
loaded through --teacher diffusers:PATH, the code path of the real teacher): distill from prompts, resume,
sample with prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from simcli.cli.app import app  # noqa: E402
from simcli.config.resolve import resolve_spec  # noqa: E402
from simcli.distill.events import EmbeddingProgress  # noqa: E402
from simcli.distill.loop import Distillation, run_distillation  # noqa: E402
from simcli.errors import UsageError  # noqa: E402
from simcli.teachers.registry import describe_teacher_name  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPTS = ["a red cube on a table", "a photo of a cat", "a blue sky over green hills", "an old bicycle", "two apples"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return write_tiny_pixart(tmp_path_factory.mktemp("pixart") / "pipe")


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def spec_for(pipeline: Path, prompts: Path, steps: int, *sets: str):
    spec, _ = resolve_spec(
        f"diffusers:{pipeline}", describe_teacher_name,
        flags={"training": {"duration_steps": steps, "batch_size": 4, "batch_gpu": 2}, "device": "cpu",
               "text": {"prompts": str(prompts)}},
        sets=["logging.status_every_kimg=0.004", "training.precision=fp32", *sets],
    )
    return spec


def losses(run_dir: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss_online"], r["loss_generator"]) for r in rows if r["kind"] == "status"]


def test_the_pixart_preset_is_the_papers_and_auto_picks_it(pipeline, prompts):
    spec = spec_for(pipeline, prompts, 2)
    assert spec.generator.optimizer.lr == spec.online.optimizer.lr == 5e-6
    assert spec.generator.noise.p_mean == spec.online.noise.p_mean == -2.0
    assert spec.generator.noise.sigma_max == 156.6155 and spec.generator.sigma_init == 2.5
    assert spec.training.activation_checkpointing and spec.text.guidance_scale == 4.5
    assert spec.generator.weighting == "none" and spec.online.weighting == "none"  # "both loss weights 1"


def test_distill_from_prompts_embeds_them_once_and_resumes_exactly(tmp_path, pipeline, prompts, cache):
    events = []
    run_distillation(spec_for(pipeline, prompts, 6), tmp_path / "straight", events.append)
    embedded = [e for e in events if isinstance(e, EmbeddingProgress)]
    assert embedded and embedded[-1].done == embedded[-1].total == len(PROMPTS)
    (store,) = (cache / "text-embeddings").iterdir()
    assert json.loads((store / "index.json").read_text())["count"] == len(PROMPTS)
    straight = losses(tmp_path / "straight")
    assert len(straight) == 6 and all(np.isfinite(straight).all(axis=1))
    events.clear()
    run_distillation(spec_for(pipeline, prompts, 3), tmp_path / "resumed", events.append)
    run_distillation(spec_for(pipeline, prompts, 6), tmp_path / "resumed", events.append)
    assert not [e for e in events if isinstance(e, EmbeddingProgress)]  # the store is reused, not rebuilt
    assert losses(tmp_path / "resumed") == straight


def test_the_teacher_is_guided_and_its_copies_see_the_prompt_alone(tmp_path, pipeline, prompts):
    with Distillation(spec_for(pipeline, prompts, 1, "text.guidance_scale=3.0"), tmp_path / "run") as d:
        assert d.nets.teacher.guidance_scale == 3.0
        assert d.nets.generator.guidance_scale == d.nets.online.guidance_scale == d.nets.ema.guidance_scale == 1.0
        # the empty prompt's embedding from the store: the tokenizer's padding only, so its mask has few ones
        assert d.nets.teacher.null_embeds.shape[0] == 1 and d.nets.teacher.null_mask.shape[0] == 1
        assert d.nets.generator.null_embeds is None  # the copies are not guided


def test_without_the_store_prompts_are_embedded_as_drawn(tmp_path, pipeline, prompts, cache):
    run_distillation(spec_for(pipeline, prompts, 4), tmp_path / "stored")
    run_distillation(spec_for(pipeline, prompts, 4, "text.embedding_cache=false"), tmp_path / "live")
    # the same prompts drawn; the store keeps bfloat16 embeddings, the live encoder float32
    for a, b in zip(losses(tmp_path / "stored"), losses(tmp_path / "live"), strict=True):
        assert a[0] == pytest.approx(b[0], rel=0.02)


def test_cli_distill_sample_with_prompts_and_errors(tmp_path, pipeline, prompts):
    runner = CliRunner()
    run = tmp_path / "run"
    base = ["distill", "--teacher", f"diffusers:{pipeline}", "--out", str(run), "--steps", "2", "--batch-size", "4",
            "--batch-gpu", "2", "--device", "cpu"]
    missing = runner.invoke(app, base)
    assert missing.exit_code == 2 and "--prompts FILE" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not run.exists()  # refused before the run directory is touched
    done = runner.invoke(app, [*base, "--prompts", str(prompts), "--json"])
    assert done.exit_code == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["text"]["prompts"] == str(prompts.resolve())

    def sample(out: Path, *args: str):
        result = runner.invoke(app, ["sample", "--generator", str(run), "--n", "3", "--out", str(out), "--device", "cpu",
                                     "--json", *args])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    one = sample(tmp_path / "a", "--prompt", "a red cube", "--prompt", "a cat", "--grid", str(tmp_path / "grid.png"))
    assert one["nfe"] == 1 and one["n"] == 3 and (tmp_path / "grid.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "a" / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red cube", "a cat", "a red cube"] and [r["seed"] for r in rows] == [0, 1, 2]
    sample(tmp_path / "b.npz", "--prompt", "a red cube", "--prompt", "a cat")
    sample(tmp_path / "c.npz", "--prompt", "two apples")
    b, c = np.load(tmp_path / "b.npz"), np.load(tmp_path / "c.npz")
    assert b["images"].shape == (3, 16, 16, 3) and list(b["prompts"]) == ["a red cube", "a cat", "a red cube"]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "000000.png")), b["images"][0])  # seeded: repeatable
    assert not np.array_equal(b["images"][0], c["images"][0])  # the prompt matters
    teacher = runner.invoke(app, ["sample", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts), "--n", "2",
                                  "--steps", "2", "--out", str(tmp_path / "t.npz"), "--device", "cpu", "--json"])
    assert teacher.exit_code == 0, teacher.stderr
    assert json.loads(teacher.stdout)["nfe"] == 4 and np.load(tmp_path / "t.npz")["images"].shape == (2, 16, 16, 3)
    wrong = runner.invoke(app, ["sample", "--generator", str(run), "--prompt", "x", "--class", "1", "--n", "1",
                                "--out", str(tmp_path / "w.npz")])
    assert wrong.exit_code == 2
    for source in (["--generator", str(run)], ["--teacher", f"diffusers:{pipeline}"]):  # prompts are needed
        no_prompts = runner.invoke(app, ["sample", *source, "--n", "1", "--out", str(tmp_path / "np.npz"), "--device", "cpu"])
        assert no_prompts.exit_code == 2 and "prompts" in no_prompts.stderr, no_prompts.stderr


def test_training_grids_decode_the_generator_on_the_first_prompts(tmp_path, pipeline, prompts):
    from PIL import Image

    events = []
    run_distillation(spec_for(pipeline, prompts, 2, "logging.grid_samples=4", "logging.snapshot_every_kimg=0.008"),
                     tmp_path / "run", events.append)
    grids = sorted((tmp_path / "run").glob("grid-*.png"))
    assert [g.name for g in grids] == ["grid-0000000.000.png", "grid-0000000.008.png"]
    first, last = (np.asarray(Image.open(g)) for g in grids)
    assert first.shape[:2] == last.shape[:2] and first.shape[0] >= 2 * 16  # 2 x 2 images of 16 px (enlarged)
    assert not np.array_equal(first, last)  # the generator moved
    assert not (tmp_path / "run" / "teacher-grid.png").exists()


def test_a_resume_says_when_the_prompt_file_changed(tmp_path, pipeline, prompts):
    run_distillation(spec_for(pipeline, prompts, 2), tmp_path / "run")
    prompts.write_text("\n".join([*PROMPTS, "a new prompt"]) + "\n")
    events = []
    run_distillation(spec_for(pipeline, prompts, 4), tmp_path / "run", events.append)
    (started,) = [e for e in events if type(e).__name__ == "RunStarted"]
    assert any("changed since the run's last state" in w for w in started.warnings)


@pytest.mark.parametrize("content", [None, b"\xff\xfe not utf-8\n", b"\n\n"])
def test_a_bad_prompt_file_is_refused_before_the_teacher_loads(tmp_path, pipeline, prompts, monkeypatch, content):
    """A missing, non-UTF-8 or empty prompt file is one line before the teacher (minutes for a real one) is loaded,
    and the run directory is not created."""
    import simcli.distill.loop as loop

    if content is None:
        prompts.unlink()
    else:
        prompts.write_bytes(content)
    monkeypatch.setattr(loop, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded first"))
    with pytest.raises(UsageError, match=str(prompts.name)):
        Distillation(spec_for(pipeline, prompts, 2), tmp_path / "run")
    assert not (tmp_path / "run").exists()
