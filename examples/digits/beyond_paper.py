"""Beyond the paper on the digits teacher (issue 19): real data, DMD2 and few-step generators. Writes part (f) of
examples/digits/RESULTS.md and the "f" key of results.json, and compare-f.png.

    python examples/digits/beyond_paper.py                  # every run, about 2 hours of one core per run set
    python examples/digits/beyond_paper.py --parallel 2     # two runs at a time

Runs, all at the same images seen (--kimg, default 50) with the digits presets (`digits`; `digits-data`, which the
digits teacher gets when --data is given):
- sim: SIM pseudo-Huber, data-free (the paper's setting; the run of experiments.py part (b) when it is in --out),
- sim-data: SIM with the training digits through SiDA's adversarial term ("SIMA"),
- sid-data: SiD with the same term (SiDA's loss),
- di-data: Diff-Instruct with the same term,
- dmd2-data: DMD2 (its DM gradient, five online updates per generator update, its GAN term on the training digits),
- sim-2step, sim-4step: SIM's generator applied at 2 and 4 noise levels (--generator-steps), data-free.

Each generator is scored on two seed sets of --n samples (seeds 0 and 100000): FID against the training and the
held-out digits (`simcli eval --backend digits`), the memorisation check (`simcli eval --nearest --ref digits-train`:
median distance of each sample to its nearest training digit), whether class-conditional samples are the digit asked
for (the shipped classifier's prediction against the label each seed drew), and the classes it predicts against the
training digits' (mode coverage). The teacher (18 Heun steps, 35 NFE) and the held-out digits are scored the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_common import load_classifier, merge_section  # noqa: E402
from experiments import SEED_SETS, simcli, snapshot_at  # noqa: E402
from experiments import distill as run_once  # noqa: E402

RUNS = {  # name -> extra distill flags
    "sim": [],
    "sim-data": ["--data", "digits-train"],
    "sid-data": ["--method", "sid", "--data", "digits-train"],
    "di-data": ["--method", "di", "--data", "digits-train"],
    "dmd2-data": ["--method", "dmd2", "--data", "digits-train"],
    "sim-2step": ["--generator-steps", "2"],
    "sim-4step": ["--generator-steps", "4"],
}
SHARED_RUN = {"sim": "sim-pseudo-huber"}  # the data-free run is experiments.py's, when present
CLASSES = 10


def run_dir(out: Path, name: str) -> Path:
    shared = out / SHARED_RUN.get(name, name)
    return shared if shared.is_dir() else out / name


def distill(name: str, out: Path, kimg: float) -> float:
    """One run to `kimg` (kept when its summary-<kimg>.json is there; experiments.py's runner, in the run's
    directory); returns its distillation wall time in seconds."""
    return run_once(run_dir(out, name).name, RUNS[name], out, kimg)


def sample(source: list[str], out: Path, n: int, seed: int) -> Path:
    """n samples (labels drawn per seed) written once to out."""
    if not out.is_file():
        simcli("sample", *source, "--n", str(n), "--seed", str(seed), "--out", str(out), "--threads", "1", "--json")
    return out


def predicted(images: np.ndarray) -> np.ndarray:
    """The shipped classifier's class of uint8 images [N, 8, 8, 1]."""
    net = load_classifier().eval()
    with torch.no_grad():
        _, logits = net(torch.from_numpy(images).permute(0, 3, 1, 2))  # uint8 [N, 1, 8, 8] in, (features, logits)
    return logits.argmax(1).numpy()


def eval_json(*args: str) -> dict:
    return json.loads(simcli("eval", *args, "--threads", "1", "--json"))


def score_samples(files: list[Path]) -> dict:
    """FID against train and held-out digits, the memorisation check and the classes, over the seed sets' files."""
    per = []
    for f in files:
        row = {ref: eval_json("--samples", str(f), "--fid", "--backend", "digits", "--ref", f"digits-{ref}")["fid"]
               for ref in ("train", "test")}
        row["nearest"] = eval_json("--samples", str(f), "--nearest", "--ref", "digits-train")["nearest_median"]
        with np.load(f) as data:
            classes = predicted(data["images"])
            asked = data["labels"] if "labels" in data.files else None
        row["agreement"] = None if asked is None else float((classes == asked).mean())
        row["counts"] = np.bincount(classes, minlength=CLASSES).tolist()
        per.append(row)
    out = {}
    for key in ("train", "test", "nearest", "agreement"):
        values = [r[key] for r in per if r[key] is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_per_seed"] = values
    out["counts"] = np.sum([r["counts"] for r in per], axis=0).tolist()
    return out


def class_share_distance(counts: list[int], reference: np.ndarray) -> float:
    """Total variation distance between predicted class shares and the training digits' class shares."""
    p = np.asarray(counts, float) / max(1, sum(counts))
    return float(0.5 * np.abs(p - reference).sum())


def section(doc: dict) -> str:
    t, h = doc["teacher"], doc["heldout"]
    lines = ["## (f) Beyond the paper: real data, DMD2 and few-step generators", "",
             f"Measured by `python examples/digits/beyond_paper.py` ({doc['kimg']:g} kimg per run, the digits presets, "
             f"{doc['n']} samples per seed set, seed sets {', '.join(map(str, SEED_SETS))}; values are the mean over "
             "the seed sets with each set's value in brackets). NN distance: median distance of a sample to its "
             "nearest training digit (`simcli eval --nearest --ref digits-train`); below the teacher's would mean "
             "samples closer to the training set than the teacher's. Agreement: the shipped classifier's class equals "
             "the class the sample was asked for. Class TV: total variation between the classes predicted for the "
             "samples (labels drawn uniformly) and the training digits' class shares.", "",
             "| images | NFE | FID vs train | FID vs held-out | NN distance | agreement | class TV | wall s |",
             "|---|---|---|---|---|---|---|---|"]

    def cells(g: dict) -> str:
        per = " / ".join(f"{v:.3f}" for v in g["train_per_seed"])
        per_t = " / ".join(f"{v:.3f}" for v in g["test_per_seed"])
        agree = "-" if g["agreement"] is None else f"{g['agreement']:.3f}"
        return (f"**{g['train']:.3f}** ({per}) | {g['test']:.3f} ({per_t}) | {g['nearest']:.3f} | {agree} | "
                f"{g['class_tv']:.3f}")

    lines.append(f"| held-out real digits (300) | - | {h['train']:.3f} | - | {h['nearest']:.3f} | - | - | - |")
    lines.append(f"| teacher, Heun 18 steps | 35 | {cells(t)} | - |")
    for name, g in doc["runs"].items():
        lines.append(f"| {name} | {g['nfe']} | {cells(g)} | {g['wall_time_s']:.0f} |")
    notes = [f"- {name}: {g['note']}." for name, g in doc["runs"].items() if g.get("note")]
    lines += ["", "Wall times are of one thread on a machine running two to four such jobs at once: compare them "
              "within a row's method, not across rows.", *notes]
    lines += ["", "Against the teacher, seed set by seed set (the same seeds draw the same classes):", ""]
    for name, g in doc["runs"].items():
        below = sum(a < b for a, b in zip(g["train_per_seed"], t["train_per_seed"], strict=True))
        lines.append(f"- {name}: FID {g['train'] / t['train']:.2f}x the teacher's (below it on {below} of "
                     f"{len(t['train_per_seed'])} seed sets); held-out FID {g['test'] / t['test']:.2f}x; NN distance "
                     f"{g['nearest']:.3f} against the teacher's {t['nearest']:.3f} and the held-out digits' "
                     f"{h['nearest']:.3f}.")
    lines += ["", "Classes the shipped classifier predicts for the samples of both seed sets (labels drawn uniformly per "
              "seed), in percent, against the training digits':", "",
              "| images | " + " | ".join(str(c) for c in range(CLASSES)) + " |", "|---" * (CLASSES + 1) + "|",
              "| training digits | " + " | ".join(f"{100 * v:.1f}" for v in doc["train_class_shares"]) + " |"]
    for name, g in [("teacher", t), *doc["runs"].items()]:
        total = max(1, sum(g["counts"]))
        lines.append(f"| {name} | " + " | ".join(f"{100 * c / total:.1f}" for c in g["counts"]) + " |")
    lines += ["", "![FID against images seen](compare-f.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits-experiments"))
    parser.add_argument("--kimg", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        walls = dict(zip(args.runs, pool.map(lambda name: distill(name, args.out, args.kimg), args.runs), strict=True))
    samples = args.out / "samples-f"
    samples.mkdir(exist_ok=True)
    from simcli.data.digits import load_digits_split

    train, _ = load_digits_split()
    shares = np.bincount(np.asarray(train.labels), minlength=CLASSES) / len(train.labels)
    teacher = [sample(["--teacher", "digits", "--steps", "18"], samples / f"teacher-{s}.npz", args.n, s)
               for s in SEED_SETS]
    doc = {"kimg": args.kimg, "n": args.n, "seed_sets": list(SEED_SETS), "train_class_shares": shares.tolist(),
           "teacher": score_samples(teacher), "runs": {}}
    doc["teacher"]["class_tv"] = class_share_distance(doc["teacher"]["counts"], shares)
    doc["heldout"] = {"train": eval_json("--samples", "digits-test", "--fid", "--backend", "digits", "--ref",
                                         "digits-train")["fid"],
                      "nearest": eval_json("--samples", "digits-test", "--nearest", "--ref", "digits-train")["nearest_median"]}
    for name, wall in walls.items():
        snapshot = snapshot_at(run_dir(args.out, name), args.kimg)
        files = [sample(["--generator", str(snapshot)], samples / f"{name}-{s}.npz", args.n, s) for s in SEED_SETS]
        g = score_samples(files)
        note = json.loads((run_dir(args.out, name) / f"summary-{args.kimg:g}.json").read_text()).get("note")
        g.update(wall_time_s=wall, note=note, flags=RUNS[name], snapshot=snapshot.name, class_tv=class_share_distance(g["counts"], shares),
                 nfe=json.loads(simcli("sample", "--generator", str(snapshot), "--n", "2", "--out",
                                       str(samples / "probe.npz"), "--json"))["nfe"])
        (samples / "probe.npz").unlink()
        doc["runs"][name] = g
        print(name, {k: g[k] for k in ("train", "test", "nearest", "agreement", "class_tv")}, flush=True)
    simcli("compare", *[str(run_dir(args.out, n)) for n in walls], "--plot", str(HERE / "compare-f.png"), "--json")
    merge_section(HERE, "f", doc, section(doc))
    print(f"wrote part f into {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
