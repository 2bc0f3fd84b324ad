"""The gmm preset evaluates the EMA generator exactly while it trains, so `simcli compare` of mixture runs has
numbers (MMD^2 and mode-weight L1) instead of '-'."""

from __future__ import annotations

# Short runs under the gmm preset: a small network and fit, 1 kimg; the preset's evaluation settings untouched.
SHORT = ("--kimg", "1.024", "--set", "teacher_fit.steps=50", "--set", "network.hidden_dim=32",
         "--set", "network.num_layers=2", "--threads", "1")


def test_gmm_preset_evaluates_every_snapshot_with_5000_exact_samples(cli, json_doc):
    result = cli("distill", "--teacher", "gmm-ring8", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json_doc(result.stdout)
    spec, prov = doc["spec"], doc["provenance"]
    assert (spec["logging"]["eval_every_kimg"], prov["logging.eval_every_kimg"]) == (128.0, "preset:gmm")
    assert spec["logging"]["eval_every_kimg"] == spec["logging"]["snapshot_every_kimg"]  # no extra snapshots
    assert (spec["evaluation"]["num_samples"], prov["evaluation.num_samples"]) == (5000, "preset:gmm")
    assert spec["evaluation"]["batch_size"] == 5000


def test_compare_of_a_gmm_preset_run_shows_the_exact_metrics(cli, json_doc, tmp_path):
    run = tmp_path / "ring8"
    distilled = cli("distill", "--teacher", "gmm-ring8", "--out", run, *SHORT)
    assert distilled.exit_code == 0, distilled.output
    assert "eval at 1.024 kimg (5000 samples, exact): mode_weight_l1 " in distilled.stderr  # the run's end
    assert "mmd^2 " in distilled.stderr and (run / "generator-best.safetensors").is_file()

    result = cli("compare", run, "--json")
    assert result.exit_code == 0, result.output
    (s,) = json_doc(result.stdout)["runs"]
    assert (s["eval_records"], s["eval_n"], s["eval_backend"]) == (1, 5000, "exact")
    assert s["best_mmd_kimg"] == 1.024 and s["best_mmd"] == s["last_mmd"]
    assert 0 < s["best_mmd"] < 2 and 0 <= s["last_mode_weight_l1"] <= 1.75 and 0 <= s["last_precision"] <= 1

    table = cli("compare", run)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "best MMD^2" in line)
    assert "last MMD^2" in header and "best mode L1" in header
    cells = [c.strip() for c in next(line for line in lines if "ring8" in line and "gmm-ring8" in line).split("│")]
    values = dict(zip([c.strip() for c in header.split("┃")], cells, strict=True))
    assert float(values["best MMD^2"]) == float(f"{s['best_mmd']:.4g}") and values["@ kimg"] == "1.024"
    assert float(values["last mode L1"]) == float(f"{s['last_mode_weight_l1']:.4g}")
