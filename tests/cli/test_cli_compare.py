"""`simcli compare`: one real tiny run plus synthetic run directories that carry evaluation records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

# ---------------------------------------------------------------- synthetic run directories


def _config(teacher: str, method: str, distance: str = "pseudo-huber") -> dict:
    return {"teacher": teacher, "loss": {"method": method, "distance": distance}, "training": {"batch_size": 64}}


def write_run(
    run_dir: Path,
    *,
    method: str = "sim",
    distance: str = "pseudo-huber",
    teacher: str = "edm-cifar10",
    kimg_total: int = 200,
    evals: list[tuple[int, float | None, float | None, float | None]] = (),
    loss_scale: float = 1.0,
    torn_tail: bool = False,
) -> Path:
    """A run directory as `simcli distill` (status) and the evaluator (eval, contract schema) write it.

    evals: (kimg, fid, is_mean, is_std); batch 64, status every 10 kimg, 0.5 s per kimg.
    """
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(_config(teacher, method, distance), indent=2))
    pending = sorted(evals)
    lines = []
    best = math.inf
    for kimg in range(10, kimg_total + 1, 10):
        step = kimg * 1000 // 64
        lines.append({
            "kind": "status", "step": step, "images_seen": kimg * 1000, "kimg": float(kimg),
            "loss_online": loss_scale * (0.05 + 0.5 * math.exp(-kimg / 40) + 0.01 * math.sin(kimg)),
            "loss_generator": loss_scale * (0.3 + 2.0 * math.exp(-kimg / 60) + 0.03 * math.cos(kimg)),
            "nonfinite_total": 0, "sec_per_kimg": 0.5, "elapsed_s": 0.5 * kimg, "cpu_mem_gib": 1.0,
        })
        while pending and pending[0][0] == kimg:
            k, fid, is_mean, is_std = pending.pop(0)
            is_best = fid is not None and fid < best
            best = min(best, fid) if fid is not None else best
            lines.append({
                "kind": "eval", "step": step, "images_seen": k * 1000, "kimg": float(k), "fid": fid,
                "is_mean": is_mean, "is_std": is_std, "n": 50000, "backend": "torch-fidelity",
                "reference": "cifar10-train", "best": is_best,
            })
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if torn_tail:
        text += '{"kind": "status", "step": 99999, "images_seen": 999'  # killed mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


SIM_EVALS = [(50, 40.0, 6.1, 0.1), (100, 12.5, 8.2, 0.12), (150, 3.25, 9.3, 0.09), (200, 4.5, 9.1, 0.1)]
SID_EVALS = [(50, 60.0, 5.0, 0.2), (100, 30.25, 6.5, 0.15), (150, 18.75, 7.25, 0.11)]


@pytest.fixture
def synthetic(tmp_path) -> dict[str, Path]:
    runs = tmp_path / "runs"
    return {
        "sim": write_run(runs / "cifar-sim", evals=SIM_EVALS, torn_tail=True),
        "sid": write_run(runs / "cifar-sid", method="sid", evals=SID_EVALS, kimg_total=150, loss_scale=1.3),
        "fresh": write_run(runs / "cifar-fresh", method="sim", distance="l2", kimg_total=40, loss_scale=0.8),
    }


def _by_name(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in doc["runs"]}


# ---------------------------------------------------------------- JSON and table


def test_json_summaries_of_synthetic_runs(cli, json_doc, synthetic):
    result = cli("compare", synthetic["sim"], synthetic["sid"], synthetic["fresh"], "--json")
    assert result.exit_code == 0, result.output
    doc = json_doc(result.stdout)
    assert set(doc) == {"runs", "plot"} and doc["plot"] is None
    assert [r["name"] for r in doc["runs"]] == ["cifar-sim", "cifar-sid", "cifar-fresh"]  # the order given
    runs = _by_name(doc)

    sim = runs["cifar-sim"]
    assert (sim["method"], sim["distance"], sim["teacher"]) == ("sim", "pseudo-huber", "edm-cifar10")
    assert sim["best_fid"] == 3.25 and sim["best_fid_kimg"] == 150.0  # min over the evals, not the last one
    assert sim["last_fid"] == 4.5 and sim["last_fid_kimg"] == 200.0
    assert (sim["last_is_mean"], sim["last_is_std"]) == (9.1, 0.1)
    assert sim["kimg"] == 200.0 and sim["images_seen"] == 200_000  # the torn last line is ignored
    assert sim["wall_time_s"] == 100.0
    assert (sim["status_records"], sim["eval_records"]) == (20, 4)
    assert (sim["eval_backend"], sim["eval_reference"], sim["eval_n"]) == ("torch-fidelity", "cifar10-train", 50000)
    assert Path(sim["path"]) == synthetic["sim"]

    sid = runs["cifar-sid"]
    assert (sid["method"], sid["distance"]) == ("sid", None)  # a distance only means something for sim
    assert (sid["best_fid"], sid["best_fid_kimg"], sid["last_fid"]) == (18.75, 150.0, 18.75)
    assert (sid["last_is_mean"], sid["last_is_std"]) == (7.25, 0.11)

    fresh = runs["cifar-fresh"]  # no evaluations yet: still listed, with nulls
    assert fresh["distance"] == "l2"
    for key in ("best_fid", "best_fid_kimg", "last_fid", "last_is_mean", "last_is_std", "eval_backend"):
        assert fresh[key] is None, key
    assert (fresh["status_records"], fresh["eval_records"], fresh["kimg"]) == (4, 0, 40.0)


def test_table_on_stdout_names_runs_and_fids(cli, synthetic, tmp_path):
    result = cli("compare", synthetic["sim"], synthetic["sid"], synthetic["fresh"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("cifar-sim", "cifar-sid", "cifar-fresh", "best FID", "last IS", "pseudo-huber", "edm-cifar10"):
        assert text in out, text
    for number in ("3.25", "4.5", "18.75", "9.1 ± 0.1", "7.25 ± 0.11", "1m40s"):
        assert number in out, number
    sim_line = next(line for line in out.splitlines() if "cifar-sim" in line)
    assert "3.25" in sim_line and "150" in sim_line  # best FID and where it happened, on the run's own row
    assert "Traceback" not in result.output and result.stderr == ""


def test_table_in_a_file_is_not_squeezed_to_80_columns(synthetic):
    from typer.testing import CliRunner

    from simcli.cli.app import app

    result = CliRunner(env={"NO_COLOR": "1", "COLUMNS": None, "SIMCLI_DEBUG": None}).invoke(
        app, ["compare", str(synthetic["sim"]), str(synthetic["sid"])]
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout  # no cell cut short
    assert "pseudo-huber" in result.stdout and "edm-cifar10" in result.stdout and "last IS" in result.stdout


def test_eval_records_without_fid_and_nonfinite_values(cli, json_doc, tmp_path):
    run = write_run(tmp_path / "r", evals=[(50, 20.0, 7.0, 0.1), (100, None, 8.0, None), (150, float("nan"), None, None)])
    result = cli("compare", run, "--json")
    assert result.exit_code == 0, result.output
    (s,) = json_doc(result.stdout)["runs"]  # valid JSON: no NaN leaks out
    assert (s["best_fid"], s["last_fid"], s["last_fid_kimg"]) == (20.0, 20.0, 50.0)
    assert (s["last_is_mean"], s["last_is_std"], s["last_is_kimg"], s["eval_records"]) == (8.0, None, 100.0, 3)
    table = cli("compare", run)
    assert table.exit_code == 0 and "8 ± -" not in table.stdout and " 8 " in table.stdout


@pytest.mark.parametrize(("sort", "order"), [("fid", ["cifar-sim", "cifar-sid", "cifar-fresh"]), ("name", ["cifar-fresh", "cifar-sid", "cifar-sim"])])
def test_sort(cli, json_doc, synthetic, sort, order):
    result = cli("compare", synthetic["fresh"], synthetic["sid"], synthetic["sim"], "--sort", sort, "--json")
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json_doc(result.stdout)["runs"]] == order


def test_duplicate_directory_names_are_told_apart_by_parent(cli, json_doc, tmp_path):
    a = write_run(tmp_path / "lr1e-4" / "run", evals=SIM_EVALS[:1])
    b = write_run(tmp_path / "lr3e-4" / "run", evals=SID_EVALS[:1])
    result = cli("compare", a, b, a, "--json")  # the same directory twice is listed once
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json_doc(result.stdout)["runs"]] == ["lr1e-4/run", "lr3e-4/run"]


def test_real_tiny_run(cli, json_doc, tiny_run, synthetic):
    distilled, run_dir = tiny_run
    assert distilled.exit_code == 0, distilled.output
    result = cli("compare", run_dir, synthetic["sim"], "--json")
    assert result.exit_code == 0, result.output
    real = _by_name(json_doc(result.stdout))["run"]
    assert (real["teacher"], real["method"], real["distance"]) == ("gmm-ring8", "sim", "pseudo-huber")
    assert (real["steps"], real["images_seen"], real["kimg"]) == (20, 640, 0.64)
    assert (real["status_records"], real["eval_records"]) == (4, 0)
    assert real["wall_time_s"] > 0 and real["best_fid"] is None and real["last_is_mean"] is None
    table = cli("compare", run_dir)
    assert table.exit_code == 0, table.output
    assert "gmm-ring8" in table.stdout and "0.64" in table.stdout


# ---------------------------------------------------------------- the plot


def _colour_pixels(img: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return sum(n for n, c in img.getcolors(img.width * img.height) if all(abs(a - b) <= tol for a, b in zip(c, rgb, strict=True)))


def test_plot_writes_a_readable_png(cli, json_doc, synthetic, tmp_path):
    png = tmp_path / "cmp.png"
    result = cli("compare", synthetic["sim"], synthetic["sid"], synthetic["fresh"], "--plot", png, "--json")
    assert result.exit_code == 0, result.output
    assert json_doc(result.stdout)["plot"] == str(png)
    assert png.stat().st_size > 0
    with Image.open(png) as im:
        assert im.format == "PNG"
        img = im.convert("RGB")
    assert img.size == (1300, 950)
    lo, hi = zip(*img.getextrema(), strict=True)
    assert max(hi) - min(lo) > 100  # not one colour
    # Every run's colour is drawn (curves, not just legend swatches), in the order given.
    for rgb in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C)):
        assert _colour_pixels(img, rgb) > 500, rgb
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_plot_panels_and_log_scale(synthetic):
    from simcli.compare.plot import render_comparison
    from simcli.compare.runs import load_runs

    fig = render_comparison(load_runs([synthetic["sim"], synthetic["sid"]]))
    fid, is_, online, gen = fig.axes[:4]
    assert fid.get_yscale() == "log"  # 3.25 .. 60 spans more than 10x
    assert is_.get_yscale() == "linear"
    assert [t.get_text() for t in fid.get_legend().get_texts()] == ["cifar-sim", "cifar-sid"]
    assert {line.get_linestyle() for line in online.get_lines()} == {"-"}
    assert {line.get_linestyle() for line in gen.get_lines()} == {"--"}
    assert all(ax.get_xlabel().startswith("kimg") for ax in (fid, is_, online, gen))


def test_plot_without_evaluations_notes_empty_panels(cli, tiny_run, tmp_path):
    _, run_dir = tiny_run
    from simcli.compare.plot import render_comparison
    from simcli.compare.runs import load_runs

    fig = render_comparison(load_runs([run_dir]))
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes == ["no FID evaluations yet", "no IS evaluations yet"]
    png = tmp_path / "real.png"
    result = cli("compare", run_dir, "--plot", png)
    assert result.exit_code == 0, result.output
    assert f"wrote {png}" in result.stderr
    with Image.open(png) as im:
        assert im.size == (1300, 950)


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def test_missing_run_directory(cli, assert_usage_error, synthetic, tmp_path, tree):
    before = tree(tmp_path)
    missing = tmp_path / "nope"
    assert_usage_error(cli("compare", synthetic["sim"], missing, "--plot", tmp_path / "p.png"), f"run directory {missing} does not exist")
    assert tree(tmp_path) == before


def test_directory_that_is_not_a_run(cli, assert_usage_error, synthetic, tmp_path, tree):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    before = tree(tmp_path)
    assert_usage_error(cli("compare", synthetic["sim"], other, "--plot", tmp_path / "p.png", "--json"), f"{other} is not a simcli run")
    assert tree(tmp_path) == before


def test_file_instead_of_directory(cli, assert_usage_error, synthetic):
    assert_usage_error(cli("compare", synthetic["sim"] / "config.json"), "is not a directory")


def test_unreadable_lines_are_skipped_as_on_resume(cli, json_doc, synthetic):
    path = synthetic["sid"] / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:20]  # a damaged status record
    path.write_text("\n".join(lines) + "\n" + '{"kind": "eval", "fid": 1.0')  # and a torn eval record at the end
    result = cli("compare", synthetic["sid"], "--json")
    assert result.exit_code == 0, result.output
    (s,) = json_doc(result.stdout)["runs"]
    assert (s["status_records"], s["eval_records"], s["best_fid"]) == (14, 3, 18.75)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--plot", "out.jpg"), "--plot writes a PNG"),
        (("--plot", "missing-dir/out.png"), "does not exist"),
        (("--sort", "kimg"), "unknown sort key 'kimg'"),
    ],
)
def test_bad_options(cli, assert_usage_error, synthetic, tmp_path, tree, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert_usage_error(cli("compare", synthetic["sim"], *args), fragment)
    assert tree(tmp_path) == before


def test_help_shows_examples(cli):
    result = cli("compare", "--help")
    assert result.exit_code == 0
    assert "simcli compare runs/* --sort fid --plot compare.png" in result.stdout


# ---------------------------------------------------------------- mixture runs: exact metrics instead of FID

# (kimg, mode_weight_l1, precision, mmd, sw2), as simcli.eval.during_training writes them for mixture teachers
RING_EVALS = [(50, 0.9, 0.7, 0.08, 0.3), (100, 0.35, 0.9, 0.0125, 0.11), (150, 0.5, 0.93, 0.02, 0.09),
              (200, 0.25, 0.95, 0.0175, 0.08)]


def write_mixture_run(run_dir: Path, evals=RING_EVALS, teacher: str = "gmm-ring8") -> Path:
    write_run(run_dir, teacher=teacher)
    lines = [{"kind": "eval", "step": k * 1000 // 64, "images_seen": k * 1000, "kimg": float(k), "n": 10000,
              "backend": "exact", "reference": teacher, "score": mmd, "mode_weight_l1": l1, "precision": prec,
              "mmd": mmd, "sw2": sw2, "best": False} for k, l1, prec, mmd, sw2 in evals]
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    return run_dir


def test_mixture_run_exact_metrics_in_json_and_table(cli, json_doc, tmp_path):
    run = write_mixture_run(tmp_path / "ring8-sim")
    other = write_mixture_run(tmp_path / "ring8-sid", [(50, 1.2, 0.5, 0.2, 0.5), (100, 0.75, 0.8, 0.05, 0.25)])
    result = cli("compare", other, run, "--json", "--sort", "fid")
    assert result.exit_code == 0, result.output
    docs = json_doc(result.stdout)["runs"]
    assert [r["name"] for r in docs] == ["ring8-sim", "ring8-sid"]  # no FID: ordered by best MMD
    s = docs[0]
    assert (s["best_mmd"], s["best_mmd_kimg"], s["last_mmd"], s["last_mmd_kimg"]) == (0.0125, 100.0, 0.0175, 200.0)
    assert (s["best_mode_weight_l1"], s["best_mode_weight_l1_kimg"], s["last_mode_weight_l1"]) == (0.25, 200.0, 0.25)
    assert (s["last_precision"], s["last_sw2"], s["eval_records"], s["eval_backend"]) == (0.95, 0.08, 4, "exact")
    assert s["best_fid"] is None and s["last_is_mean"] is None

    table = cli("compare", run, other)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "best MMD^2" in line)
    assert "last mode L1" in header and "best mode L1" in header and "last MMD^2" in header
    assert "FID" not in header  # no empty FID columns
    row = [c.strip() for c in next(line for line in table.stdout.splitlines() if "ring8-sim" in line).split("│")]
    assert ["0.0125", "100", "0.0175", "0.25", "0.25"] == row[row.index("0.0125"):row.index("0.0125") + 5]


def test_mixed_image_and_mixture_runs_show_both_column_groups(cli, synthetic, tmp_path):
    run = write_mixture_run(tmp_path / "ring8-sim")
    table = cli("compare", synthetic["sim"], run)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "best MMD^2" in line)
    assert "best FID" in header and "last IS" in header
    assert "0.0125" in next(line for line in table.stdout.splitlines() if "ring8-sim" in line)
    assert "3.25" in next(line for line in table.stdout.splitlines() if "cifar-sim" in line)


def test_plot_of_mixture_runs_has_exact_metric_panels(cli, tmp_path):
    from simcli.compare.plot import render_comparison
    from simcli.compare.runs import load_runs

    a = write_mixture_run(tmp_path / "ring8-sim")
    b = write_mixture_run(tmp_path / "ring8-sid", [(50, 1.2, 0.5, 0.2, 0.5), (100, 0.75, 0.8, 0.05, 0.25)])
    fig = render_comparison(load_runs([a, b]))
    l1, mmd = fig.axes[:2]
    assert l1.get_title().startswith("mode-weight L1") and mmd.get_title().startswith("MMD^2") and mmd.get_ylabel().startswith("MMD^2")
    assert not [t.get_text() for ax in fig.axes for t in ax.texts]  # no "no evaluations" notes
    assert list(l1.get_lines()[0].get_ydata()) == [0.9, 0.35, 0.5, 0.25]
    assert list(mmd.get_lines()[0].get_ydata()) == [0.08, 0.0125, 0.02, 0.0175]
    assert mmd.get_yscale() == "log"  # 0.0125 .. 0.2 spans more than 10x
    assert [t.get_text() for t in mmd.get_legend().get_texts()] == ["ring8-sim", "ring8-sid"]
    png = tmp_path / "ring.png"
    result = cli("compare", a, b, "--plot", png)
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        img = im.convert("RGB")
    assert img.size == (1300, 950)
    assert _colour_pixels(img, (0x1F, 0x77, 0xB4)) > 500 and _colour_pixels(img, (0xD6, 0x27, 0x28)) > 500
