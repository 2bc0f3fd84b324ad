"""Issue 16 at the command line: a generator or teacher that is damaged (NaN or Inf weights, a sigma_init that is not
a finite positive number, metadata of the wrong type) is exit 2 naming the file; one whose samples come out NaN or
Inf is exit 1 naming the seeds, with nothing written; `eval --generator RUN` says which snapshot it scores;
`sample --grid` says where the grid is."""

from __future__ import annotations

import json

import pytest

from simcli.rundir.layout import generator_path
from simcli.rundir.network_file import TEACHER_FORMAT
from tests.helpers.crafted_files import MLP, TINY_EDM, write_network_file
from tests.helpers.edm_pickle_writer import write_edm_pickle
from tests.helpers.tiny_edm import TINY_DDPMPP


def one_line(result, code: int, *fragments: str) -> str:
    """Exit code `code`, one 'simcli: error:' line on stderr holding the fragments, no traceback; returns the line."""
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(("architecture", "options", "fragment"), [
    (MLP, {"poison": float("nan")}, "the weights hold NaN or Inf values (1 of 5 tensors: net.3.weight)"),
    (MLP, {"poison": float("inf")}, "the weights hold NaN or Inf values (1 of 5 tensors: net.3.weight)"),
    (MLP, {"raw": {"sigma_init": "NaN"}}, "metadata sigma_init must be a positive number within float32's range, got nan"),
    (TINY_EDM, {"raw": {"sigma_init": "-2.5"}}, "metadata sigma_init must be a positive number within float32's range, got -2.5"),
    (MLP, {"raw": {"sigma_init": json.dumps("2.5")}}, "got '2.5'"),
    (MLP, {"raw": {"sigma_init": "1e300"}}, "got 1e+300"),
    (MLP, {"raw": {"spec": "[1, 2]"}}, "metadata spec must be a mapping, got [1, 2]"),
    (MLP, {"raw": {"architecture": "[" * 50_000 + "]" * 50_000}}, "corrupt metadata: 'architecture'"),
])
def test_a_damaged_generator_is_refused_naming_the_file(cli, tree, tmp_path, architecture, options, fragment):
    gen = write_network_file(tmp_path / "gen.safetensors", architecture, **options)
    before = tree(tmp_path)
    for out in ("s.npz", "pngs"):
        line = one_line(cli("sample", "--generator", gen, "--n", 3, "--out", tmp_path / out, "--device", "cpu"), 2, fragment)
        assert line.startswith(f"simcli: error: {gen}")
    if architecture is TINY_EDM:
        one_line(cli("eval", "--generator", gen, "--n", 3, "--fid", "--backend", "digits", "--ref", "digits-test",
                     "--device", "cpu"), 2, fragment)
    assert tree(tmp_path) == before  # nothing written


def test_nonfinite_samples_fail_naming_the_seeds_and_nothing_is_written(cli, tree, tmp_path):
    """Finite weights whose forward overflows: before, black PNGs (NaN -> 0) and NaN npz rows with exit 0."""
    image_gen = write_network_file(tmp_path / "img.safetensors", TINY_EDM, scale=1e30)
    vector_gen = write_network_file(tmp_path / "vec.safetensors", MLP, scale=1e30)
    before = tree(tmp_path)
    one_line(cli("sample", "--generator", image_gen, "--n", 3, "--seed", 5, "--out", tmp_path / "pngs", "--grid",
                 tmp_path / "grid.png", "--device", "cpu"), 1,
             f"generator {image_gen} gave NaN or Inf for 3 of 3 seeds (5, 6, 7); nothing was written")
    one_line(cli("sample", "--generator", vector_gen, "--n", 4, "--out", tmp_path / "v.npz", "--device", "cpu"), 1,
             f"generator {vector_gen} gave NaN or Inf for 4 of 4 seeds (0, 1, 2, 3); nothing was written")
    one_line(cli("eval", "--generator", image_gen, "--n", 3, "--fid", "--backend", "digits", "--ref", "digits-test",
                 "--device", "cpu"), 1, "gave NaN or Inf for 3 of 3 seeds (0, 1, 2); nothing was scored")
    teacher = write_network_file(tmp_path / "teacher.safetensors", TINY_EDM, TEACHER_FORMAT, scale=1e30,
                                 raw={"sigma_init": None, "spec": None})
    before = tree(tmp_path)
    one_line(cli("sample", "--teacher", teacher, "--steps", 2, "--n", 2, "--out", tmp_path / "t", "--device", "cpu"), 1,
             f"teacher {teacher} gave NaN or Inf for 2 of 2 seeds (0, 1); nothing was written")
    assert tree(tmp_path) == before


def test_a_pickle_whose_one_forward_needs_terabytes_is_refused(cli, tmp_path):
    """A ~1 MB EDM pickle at img_resolution 4096: its decoder attends over 2048^2 pixels (2^46 bytes of scores)."""
    kwargs = {**TINY_DDPMPP, "label_dim": 0, "img_resolution": 4096}
    from simcli.nets.registry import build_edm_network

    path = write_edm_pickle(tmp_path / "wide.pkl", build_edm_network("EDMPrecond", kwargs), kwargs)
    line = one_line(cli("sample", "--teacher", path, "--n", 1, "--steps", 2, "--out", tmp_path / "o", "--device", "cpu"),
                    2, f"{path}: the recorded architecture needs about", "TiB activations), more than the")
    assert not (tmp_path / "o").exists() and "nothing was allocated" in line


def _run_with_best(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for kimg in (1, 2):
        write_network_file(generator_path(run, kimg * 1000), TINY_EDM, raw={"images_seen": str(kimg * 1000)}, seed=kimg)
    (run / "generator-best.safetensors").write_bytes(generator_path(run, 1000).read_bytes())
    return run


def test_eval_of_a_run_directory_says_which_snapshot_it_scores(cli, json_doc, tmp_path):
    run = _run_with_best(tmp_path)
    newest, best = generator_path(run, 2000), run / "generator-best.safetensors"
    args = ("eval", "--generator", run, "--n", 8, "--fid", "--backend", "digits", "--ref", "digits-test", "--device", "cpu")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert (f"scored {newest}, the newest snapshot of its run; {best} (the best in-training evaluation) is beside it: "
            "pass it as --generator to score that one") in " ".join(result.stderr.split())
    report = json_doc(cli(*args, "--json").stdout)
    assert (report["generator"], report["generator_chosen"], report["best_generator"]) == (
        str(newest), "the newest snapshot", str(best))
    report = json_doc(cli("eval", "--generator", best, *args[3:], "--json").stdout)
    assert (report["generator"], report["generator_chosen"], report["best_generator"]) == (
        str(best), "the file given", None)


def test_sample_grid_prints_the_grid_path(cli, tmp_path):
    run = _run_with_best(tmp_path)
    grid = tmp_path / "grid.png"
    result = cli("sample", "--generator", run, "--n", 4, "--out", tmp_path / "pngs", "--grid", grid, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[:2] == [f"wrote 4 samples (generator) to {tmp_path / 'pngs'}", f"wrote {grid}"] and grid.is_file()
    assert f"sampled {generator_path(run, 2000)}, the newest snapshot of its run" in " ".join(result.stderr.split())


def test_distill_refuses_a_teacher_whose_outputs_are_not_finite(cli, tmp_path):
    """Before: 5 iterations (fewer than training.max_nonfinite_steps), all non-finite, ended with exit 0."""
    teacher = write_network_file(tmp_path / "teacher.safetensors", TINY_EDM, TEACHER_FORMAT, scale=1e30,
                                 raw={"sigma_init": None, "spec": None})
    out = tmp_path / "run"
    one_line(cli("distill", "--teacher", teacher, "--preset", "tiny", "--steps", 5, "--out", out, "--device", "cpu"), 2,
             f"teacher {teacher} gives NaN or Inf outputs at sigma 2.5, ", "every iteration of the run would be non-finite")
    assert not out.exists()


def test_text_to_image_samples_are_checked_before_the_vae(cli, tree, tmp_path, monkeypatch):
    """Before: a generator whose latents overflow gave all-black 16x16 PNGs and exit 0."""
    pytest.importorskip("diffusers")
    from simcli.rundir.snapshots import save_generator
    from simcli.teachers.registry import load_teacher
    from tests.helpers.tiny_pixart import write_tiny_pixart

    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    name = f"diffusers:{write_tiny_pixart(tmp_path / 'pipe')}"
    teacher = load_teacher(name)
    state = {k: v * 1e30 if v.ndim >= 2 else v for k, v in teacher.denoiser.state_dict().items()}
    gen = tmp_path / "gen.safetensors"
    save_generator(gen, state, {"architecture": teacher.architecture, "sigma_init": 2.5, "spec": {"teacher": name}})
    before = tree(tmp_path)
    one_line(cli("sample", "--generator", gen, "--prompt", "a cat", "--n", 3, "--out", tmp_path / "o", "--grid",
                 tmp_path / "g.png", "--device", "cpu"), 1,
             f"generator {gen} gave NaN or Inf for 3 of 3 seeds (0, 1, 2); nothing was written")
    assert tree(tmp_path) == before
