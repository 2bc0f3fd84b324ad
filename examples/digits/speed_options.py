"""Do simcli's speed options cost quality? bf16 against fp32, and the online model trained on the generator step's
samples against fresh samples, on the shipped digits teacher: writes examples/digits/SPEED-OPTIONS.md.

    python examples/digits/speed_options.py            # about 25 minutes on 2 CPU cores

Four SIM runs of the digits preset at equal images seen (--kimg, 50 by default), through the command line:
- fp32 and bf16 (training.precision), the preset as it is (two online updates per generator update);
- fresh samples and generator-step samples (online.sample_source) with one online update per generator update,
  since the generator step makes one batch of samples.
Each final generator is scored by `simcli eval --backend digits` on 10,000 samples, two seed sets (the helpers of
experiments.py, which this script imports from its folder).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments import HERE, distill, fmt, scores, snapshot_at

ONE_UPDATE = ["--set", "online.updates_per_generator_update=1"]
RUNS = {  # name -> (what it is compared for, extra distill flags)
    "sim-fp32": ("precision", []),
    "sim-bf16": ("precision", ["--set", "training.precision=bf16"]),
    "sim-fresh-u1": ("samples", ONE_UPDATE),
    "sim-generator-step-u1": ("samples", [*ONE_UPDATE, "--set", "online.sample_source=generator-step"]),
}


def sec_per_kimg(run: Path) -> float | None:
    """The median sec/kimg of the run's status records."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    values = sorted(r["sec_per_kimg"] for r in rows if r.get("kind") == "status" and r.get("sec_per_kimg"))
    return values[len(values) // 2] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits-speed-options"))
    parser.add_argument("--kimg", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        walls = dict(zip(RUNS, pool.map(lambda name: distill(name, RUNS[name][1], args.out, args.kimg), RUNS), strict=True))
    res = {}
    for name, wall in walls.items():
        run = args.out / name
        res[name] = {**scores(["--generator", str(snapshot_at(run, args.kimg))], args.n), "wall_time_s": wall,
                     "sec_per_kimg": sec_per_kimg(run)}
        print(name, res[name], flush=True)
    lines = ["# Digits: what the speed options cost", "",
             f"Measured by `python examples/digits/speed_options.py` ({args.kimg:g} kimg per run, digits preset, SIM "
             f"pseudo-Huber, {args.n} samples per evaluation, two seed sets; +- is half their range). Machine: 2 CPU "
             f"cores, one thread per run, {args.parallel} runs at a time (sec/kimg are comparable within a pair only).", ""]
    # (The run that produced the committed SPEED-OPTIONS.md shared the machine with test suites and benchmarks.)
    for title, base, other in (
        ("bf16 against fp32 (the preset: two online updates per generator update)", "sim-fp32", "sim-bf16"),
        ("The online model on the generator step's samples (one online update per generator update)",
         "sim-fresh-u1", "sim-generator-step-u1"),
    ):
        lines += [f"## {title}", "", "| run | FID vs train | FID vs held-out | IS | sec/kimg | wall s |", "|---|---|---|---|---|---|"]
        for name in (base, other):
            g = res[name]
            lines.append(f"| {name} | {fmt(g['fid_train'], g['fid_train_spread'])} | {fmt(g['fid_test'], g['fid_test_spread'])} "
                         f"| {fmt(g['is'])} | {fmt(g['sec_per_kimg'])} | {g['wall_time_s']:.0f} |")
        change = res[other]["fid_train"] / res[base]["fid_train"] - 1
        faster = 1 - res[other]["sec_per_kimg"] / res[base]["sec_per_kimg"]
        lines += ["", f"- {other} / {base} FID against train: **{change:+.1%}**; time per kimg {-faster:+.1%}.", ""]
    lines += [
        "Reading: a change of FID within the seed sets' spread is noise; the 10% bound of the precision check is on",
        "FID against train. The generator step's samples come from G in train mode (dropout on), fresh samples from",
        "G in eval mode, the generator that is sampled and evaluated: the online model then learns the score of a",
        "slightly different distribution, which is the likely cause of a loss of quality. simcli offers",
        "online.sample_source = generator-step, off by default, and a run that uses it says what it was measured to",
        "cost here.", ""]
    (HERE / "SPEED-OPTIONS.md").write_text("\n".join(lines))
    (HERE / "speed-options.json").write_text(json.dumps({"kimg": args.kimg, "n": args.n, "runs": res}, indent=2) + "\n")
    print(f"wrote {HERE / 'SPEED-OPTIONS.md'}")


if __name__ == "__main__":
    main()
