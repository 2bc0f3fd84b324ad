"""The paper's claims at small scale, on the shipped digits teacher: writes examples/digits/RESULTS.md and plots.

    python examples/digits/experiments.py                 # everything, about 45 minutes on 2 CPU cores
    python examples/digits/experiments.py --parts a b     # only some parts

(a) the teacher at 35 network evaluations against the one-step SIM generator (FID and IS against the held-out
    and the training digits), with the held-out digits' own FID against the training digits as the floor, after
    the preset's budget and after a longer one (--parity-kimg: the SIM run of (b) resumed);
(b) SIM pseudo-Huber, SIM l2, SiD and Diff-Instruct at equal images seen (the digits preset), FID against images
    seen through `simcli compare`;
(c) a learning rate 10x the preset's for SIM, SiD and Diff-Instruct (the paper's Figure 2 claim: SIM stays stable
    where SiD and Diff-Instruct do not);
(d) a sweep of the pseudo-Huber constant c, to choose simcli's default by measurement;
(e) LoRA against full fine-tuning: the SIM pseudo-Huber run of (b) (all weights) against `--lora-rank` 8, 32 and 64
    at the preset's learning rate and rank 32 at 10x, at equal images seen: FID, trainable parameters, sec/kimg and
    snapshot size. `--parts e` alone merges its section and its "e" key into the existing RESULTS.md and
    results.json and leaves the other parts' numbers as they are.

Everything runs through the `simcli` command line, as a user would: `distill` with the digits preset, `eval
--backend digits` on 10,000 samples per generator (two seed sets), `compare --plot`. Runs are kept in --out and
reused when they are complete (rerunning the script resumes or skips them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from digits_common import lora_report, lora_section, merge_section

HERE = Path(__file__).resolve().parent
SIMCLI = [sys.executable, "-m", "simcli"]
DEFAULT_LR = 1e-4  # the digits preset's
SEED_SETS = (0, 100_000)  # first seeds of the two evaluation sample sets

RUNS = {  # name -> (part, extra distill flags)
    "sim-pseudo-huber": ("b", []),
    "sim-l2": ("b", ["--distance", "l2"]),
    "sid": ("b", ["--method", "sid"]),
    "di": ("b", ["--method", "di"]),
    "sim-pseudo-huber-lr10x": ("c", ["--lr", str(10 * DEFAULT_LR)]),
    "sid-lr10x": ("c", ["--method", "sid", "--lr", str(10 * DEFAULT_LR)]),
    "di-lr10x": ("c", ["--method", "di", "--lr", str(10 * DEFAULT_LR)]),
    "sim-c0.1x": ("d", ["--set", "loss.pseudo_huber_c=0.000432"]),
    "sim-c10x": ("d", ["--set", "loss.pseudo_huber_c=0.0432"]),
    "sim-lora8": ("e", ["--lora-rank", "8"]),
    "sim-lora32": ("e", ["--lora-rank", "32"]),
    "sim-lora64": ("e", ["--lora-rank", "64"]),
    "sim-lora32-lr10x": ("e", ["--lora-rank", "32", "--lr", str(10 * DEFAULT_LR)]),
}
C_OF_RUN = {"sim-c0.1x": 0.000432, "sim-pseudo-huber": 0.00432, "sim-c10x": 0.0432}


def simcli(*args: str, log: Path | None = None) -> str:
    """Run a simcli command; its stdout (stderr goes to the log, or is shown on failure)."""
    err = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed by the process end
    done = subprocess.run([*SIMCLI, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        raise SystemExit(f"simcli {' '.join(args)} failed ({done.returncode}): {done.stderr or log}")
    return done.stdout


def distill(name: str, flags: list[str], out: Path, kimg: float) -> float:
    """One run of the digits preset to `kimg` (resumed when it is shorter); returns its wall time in seconds."""
    run = out / name
    summary = run / f"summary-{kimg:g}.json"
    if summary.is_file():
        return json.loads(summary.read_text())["wall_time_s"]
    t0 = time.perf_counter()
    doc = simcli("distill", "--teacher", "digits", "--out", str(run), "--kimg", str(kimg), "--threads", "1",
                 "--json", *flags, log=out / f"{name}.log")
    summary.write_text(doc)
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(doc)["wall_time_s"]


def snapshot_at(run: Path, kimg: float) -> Path:
    """The run's generator snapshot at (the iteration nearest to) kimg thousand images."""
    snapshots = sorted(run.glob("generator-[0-9]*.safetensors"))
    return min(snapshots, key=lambda p: abs(float(p.stem.split("-")[1]) - kimg))


def score(source: list[str], ref: str, n: int, seed: int) -> dict:
    """FID and IS of images against a shipped reference, through `simcli eval --backend digits`."""
    doc = simcli("eval", *source, "--fid", "--is", "--backend", "digits", "--ref", ref, "--n", str(n),
                 "--seed", str(seed), "--threads", "1", "--json")
    report = json.loads(doc)
    return {"fid": report["fid"], "is": report["is_mean"]}


def scores(source: list[str], n: int, seeds=SEED_SETS) -> dict:
    """Mean and spread of FID against train and test, and IS, over the seed sets."""
    rows = {ref: [score(source, f"digits-{ref}", n, s) for s in seeds] for ref in ("train", "test")}
    out = {}
    for ref, vals in rows.items():
        fids = [v["fid"] for v in vals]
        out[f"fid_{ref}"], out[f"fid_{ref}_spread"] = float(np.mean(fids)), float(np.ptp(fids) / 2)
        out[f"fid_{ref}_per_seed"] = [float(f) for f in fids]
    out["is"] = float(np.mean([v["is"] for v in rows["train"]]))
    return out


def teacher_and_floor(out: Path, n: int) -> dict:
    """Scores of the teacher's 18-step Heun samples (35 NFE) and of the real held-out digits."""
    from simcli.data.digits import load_digits_split

    results = {}
    for seed in SEED_SETS:
        path = out / f"teacher-heun18-{seed}.npz"
        if not path.is_file():
            simcli("sample", "--teacher", "digits", "--steps", "18", "--n", str(n), "--seed", str(seed),
                   "--out", str(path), "--threads", "1", "--json")
    per_seed = [{ref: score(["--samples", str(out / f"teacher-heun18-{s}.npz")], f"digits-{ref}", n, 0)
                 for ref in ("train", "test")} for s in SEED_SETS]
    results["teacher"] = {
        "fid_train": float(np.mean([p["train"]["fid"] for p in per_seed])),
        "fid_train_spread": float(np.ptp([p["train"]["fid"] for p in per_seed]) / 2),
        "fid_test": float(np.mean([p["test"]["fid"] for p in per_seed])),
        "fid_test_spread": float(np.ptp([p["test"]["fid"] for p in per_seed]) / 2),
        "is": float(np.mean([p["train"]["is"] for p in per_seed])),
    }
    _, test = load_digits_split()
    held = out / "heldout-digits.npz"
    images = (test.images * 127.5 + 128).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.savez(held, images=images, labels=test.labels, seeds=np.arange(len(images)))
    results["heldout"] = score(["--samples", str(held)], "digits-train", len(images), 0)
    return results


def fmt(x: float | None, spread: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" + (f" +- {spread:.3f}" if spread is not None else "")


def write_results(res: dict, out: Path, args) -> None:
    """RESULTS.md: the tables, and each claim checked against the numbers."""
    gen, t, floor = res["generators"], res["a"]["teacher"], res["a"]["heldout"]
    lines = ["# Digits: the paper's claims at small scale", "",
             f"Measured by `python examples/digits/experiments.py` ({args.kimg:g} kimg per run, digits preset, "
             f"{args.n} samples per evaluation, two seed sets; +- is half their range). Machine: 2 CPU cores, "
             "one thread per run, two runs at a time. FID is the Frechet distance of the shipped digits "
             "classifier's 64-d features (`--backend digits`), IS its 10-class Inception-style score.", "",
             "## (a) Teacher (35 NFE) and the one-step SIM generator", "",
             "| images | NFE | FID vs train | FID vs held-out | IS |", "|---|---|---|---|---|",
             f"| held-out real digits (300), the floor | - | {fmt(floor['fid'])} | - | {fmt(floor['is'])} |",
             f"| teacher, Heun 18 steps | 35 | {fmt(t['fid_train'], t['fid_train_spread'])} | "
             f"{fmt(t['fid_test'], t['fid_test_spread'])} | {fmt(t['is'])} |"]
    sim = gen.get("sim-pseudo-huber")
    longer = res["a"].get("sim_longer")
    rows = [(f"SIM pseudo-Huber, one step, {args.kimg:g} kimg", sim)] if sim else []
    rows += [(f"SIM pseudo-Huber, one step, {args.parity_kimg:g} kimg", longer)] if longer else []
    for label, g in rows:
        lines.append(f"| {label} | 1 | {fmt(g['fid_train'], g['fid_train_spread'])} | "
                     f"{fmt(g['fid_test'], g['fid_test_spread'])} | {fmt(g['is'])} |")
    lines.append("")
    for label, g in rows:
        ratio = g["fid_train"] / t["fid_train"]
        lines.append(f"- {label}: one-step / teacher FID against train **{ratio:.2f}** "
                     f"({'within' if ratio <= 1.2 else 'above'} the 1.2x target) after {g['wall_time_s']:.0f} s of "
                     "distillation.")
    for part, title in (("b", "(b) Methods at equal images seen"), ("c", "(c) Learning rate 10x the preset's"),
                        ("d", "(d) The pseudo-Huber constant c")):
        names = [n for n, (p, _) in RUNS.items() if p == part and n in gen]
        if part == "d" and "sim-pseudo-huber" in gen:
            names = sorted([*names, "sim-pseudo-huber"], key=lambda n: C_OF_RUN[n])
        if not names:
            continue
        lines += ["", f"## {title}", "", "| run | FID vs train | FID vs held-out | IS | best FID in training (kimg) | "
                  "non-finite iterations | wall s |", "|---|---|---|---|---|---|---|"]
        for name in names:
            g = gen[name]
            label = f"{name} (c = {C_OF_RUN[name]:g})" if part == "d" else name
            lines.append(f"| {label} | {fmt(g['fid_train'], g['fid_train_spread'])} | "
                         f"{fmt(g['fid_test'], g['fid_test_spread'])} | {fmt(g['is'])} | "
                         f"{fmt(g['best_fid'])} ({g['best_kimg']:g}) | {g['nonfinite']} | {g['wall_time_s']:.0f} |")
        if part in ("b", "c"):
            lines += ["", f"![FID against images seen](compare-{part}.png)"]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (HERE / "results.json").write_text(json.dumps(res, indent=2) + "\n")


def part_e(res: dict, args) -> dict:
    """(e): the LoRA runs and the full-weight run of (b), merged into RESULTS.md and results.json under "e"."""
    names = ["sim-pseudo-huber", *[n for n, (p, _) in RUNS.items() if p == "e"]]
    doc = lora_report(args.out, args.kimg, DEFAULT_LR, {n: {"scores": res["generators"][n], "flags": RUNS[n][1],
                                                             "snapshot": snapshot_at(args.out / n, args.kimg)}
                                                         for n in names})
    doc.update(kimg=args.kimg, n=args.n, seed_sets=list(SEED_SETS), parallel=args.parallel)
    simcli("compare", *[str(args.out / n) for n in names], "--plot", str(HERE / "compare-e.png"), "--json")
    merge_section(HERE, "e", doc, lora_section(doc))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits-experiments"))
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"])
    parser.add_argument("--kimg", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--parity-kimg", type=float, default=100.0, help="(a): the SIM run resumed to this budget")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {n: f for n, (p, f) in RUNS.items() if p in args.parts or (n == "sim-pseudo-huber" and {"a", "d", "e"} & set(args.parts))}
    with ThreadPoolExecutor(args.parallel) as pool:
        walls = dict(zip(wanted, pool.map(lambda item: distill(*item, args.out, args.kimg), wanted.items()), strict=True))
    res: dict = {"kimg": args.kimg, "n": args.n, "generators": {}}
    for name, wall in walls.items():
        run = args.out / name
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in evals if r.get("kind") == "eval"]
        best = min(evals, key=lambda r: r["fid"]) if evals else {"fid": None, "kimg": 0}
        status = [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "status"]
        res["generators"][name] = {**scores(["--generator", str(snapshot_at(run, args.kimg))], args.n), "wall_time_s": wall,
                                   "best_fid": best["fid"], "best_kimg": best["kimg"],
                                   "nonfinite": status[-1]["nonfinite_total"] if status else 0}
        print(name, res["generators"][name], flush=True)
    e_doc = part_e(res, args) if "e" in args.parts else None
    if e_doc:
        for name in [n for n in res["generators"] if RUNS[n][0] == "e"]:
            del res["generators"][name]  # kept under "e" only
    if not set(args.parts) - {"e"}:  # part e alone: merged into the existing results, the other parts untouched
        print(f"wrote part e into {HERE / 'RESULTS.md'}")
        return
    res["a"] = teacher_and_floor(args.out, args.n)
    if "a" in args.parts and args.parity_kimg > args.kimg:
        wall = distill("sim-pseudo-huber", [], args.out, args.parity_kimg)
        run = args.out / "sim-pseudo-huber"
        res["a"]["sim_longer"] = {**scores(["--generator", str(snapshot_at(run, args.parity_kimg))], args.n),
                                  "wall_time_s": wall}
    for part in ("b", "c"):
        runs = [str(args.out / n) for n, (p, _) in RUNS.items() if p == part and n in walls]
        if part == "c" and "sim-pseudo-huber" in walls:
            runs = [str(args.out / "sim-pseudo-huber"), *runs]
        if runs:
            simcli("compare", *runs, "--plot", str(HERE / f"compare-{part}.png"), "--json")
    write_results(res, args.out, args)
    if e_doc:  # write_results starts RESULTS.md and results.json afresh: put (e) back in
        merge_section(HERE, "e", e_doc, lora_section(e_doc))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
