"""Presets through the CLI: a preset's micro-batch adapting to --batch-size, and a run directory started under
another `auto` preset resuming with the same command."""

from __future__ import annotations

import json


def test_a_presets_micro_batch_adapts_to_a_smaller_batch_and_says_so(cli, json_doc, tmp_path):
    """An EDM teacher under the ffhq64 preset (micro-batches of 32) run at --batch-size 6: micro-batches of 6, a note
    on stderr, and the adapted value in config.json; an explicit --batch-gpu that does not divide stays an error."""
    from tests.helpers.tiny_edm import write_tiny_edm

    teacher = write_tiny_edm(tmp_path / "edm-ffhq-64x64-uncond-vp.pkl")  # an official file name: the ffhq64 preset
    args = ["distill", "--teacher", teacher, "--batch-size", 6, "--steps", 1, "--precision", "fp32",
            "--set", "logging.grid_samples=0", "--json"]
    result = cli(*args, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json_doc(result.stdout)["micro_batch"] == 6
    assert "note: micro-batches of 6 images, as the ffhq64 preset's do not divide the batch of 6 images" in result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["batch_gpu"] == 6
    refused = cli(*args, "--batch-gpu", 4, "--out", tmp_path / "other")
    assert refused.exit_code == 2 and "batch_gpu (4) must divide batch_size (6)" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_a_run_started_under_another_auto_preset_resumes_with_the_same_command(cli, json_doc, tmp_path):
    """A run directory from before the dataset presets (its EDM FFHQ teacher then resolved to cifar10: fp32, no
    micro-batch, the pickle's dropout) resumes with the command that started it, and keeps its values."""
    from tests.helpers.tiny_edm import write_tiny_edm

    teacher = write_tiny_edm(tmp_path / "edm-ffhq-64x64-uncond-vp.pkl")
    run = tmp_path / "run"
    common = ["distill", "--teacher", teacher, "--batch-size", 4, "--set", "logging.grid_samples=0", "--json",
              "--out", run]
    first = cli(*common, "--steps", 1, "--preset", "cifar10")  # as `auto` resolved before
    assert first.exit_code == 0, first.output
    before = json.loads((run / "config.json").read_text())
    again = cli(*common, "--steps", 2)  # `auto` is ffhq64 now
    assert again.exit_code == 0, again.output
    assert json_doc(again.stdout)["steps"] == 2 and json_doc(again.stdout)["resumed_from"].endswith("state-0000000.004.pt")
    assert "note: the run goes on with the values its config.json records for training.batch_gpu, training.dropout, " \
           "training.precision" in again.stderr
    after = json.loads((run / "config.json").read_text())
    assert after["training"].pop("duration_steps") == 2 and before["training"].pop("duration_steps") == 1
    assert after == before
    # what the user gives still counts: a learning rate may change on resume, a method may not
    changed = cli(*common, "--steps", 3, "--lr", "2e-5")
    assert changed.exit_code == 0 and "generator.optimizer.lr 1e-05 -> 2e-05" in changed.stderr
    refused = cli(*common, "--steps", 4, "--method", "sid")
    assert refused.exit_code == 2 and "holds a run with a different spec (loss.method)" in refused.stderr
    assert "note:" not in refused.stderr  # notes come once the run has started
