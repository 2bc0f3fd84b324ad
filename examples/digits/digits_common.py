"""Helpers shared by the digits example scripts: uint8 conversion, safetensors metadata, seeding, timing.

The scripts run as `python examples/digits/SCRIPT.py`, so this directory is on sys.path and they import
this module by name.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "simcli" / "assets" / "digits"
NUM_THREADS = 2  # the saved bytes reproduce only with the same torch version and the same thread count


def quantize(x: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W] via (x * 127.5 + 128).clip(0, 255), as EDM does."""
    return (x.detach().to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def seed_everything(seed: int) -> None:
    """Fix Python, numpy and torch seeds, deterministic kernels and the thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_safetensors(state: dict[str, torch.Tensor], path: Path, fmt: str, metadata: dict[str, Any]) -> None:
    """Write weights with metadata as simcli's network files hold it: `format` = fmt, every other value JSON.

    simcli's own writer (simcli.rundir.network_file): the header is canonical (keys sorted, compact JSON), so
    equal content gives equal bytes, although safetensors itself writes the metadata map in a random order.
    """
    from simcli.rundir.network_file import save_network_file

    save_network_file(Path(path), state, metadata, fmt)


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a network file: `format` as is, every other value JSON-decoded."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = dict(f.metadata() or {})
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}


def load_classifier(path: Path | None = None) -> torch.nn.Module:
    """The trained DigitsClassifier from its safetensors file, in eval mode."""
    from safetensors.torch import load_file

    from simcli.nets.digits_classifier import DigitsClassifier

    path = Path(path or ASSETS / "classifier.safetensors")
    arch = read_metadata(path)["architecture"]
    net = DigitsClassifier(**{k: v for k, v in arch.items() if k != "class_name"})
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def load_teacher(path: Path | None = None) -> torch.nn.Module:
    """The trained EDMPrecond teacher from its safetensors file, in eval mode."""
    from safetensors.torch import load_file

    from simcli.nets.edm_precond import EDMPrecond

    path = Path(path or ASSETS / "teacher.safetensors")
    arch = read_metadata(path)["architecture"]
    assert arch["kind"] == "edm" and arch["class_name"] == "EDMPrecond", arch
    net = EDMPrecond(**arch["init_kwargs"])
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- (e) LoRA vs full


def lora_report(out: Path, kimg: float, default_lr: float, entries: dict[str, dict]) -> dict:
    """Part (e)'s numbers. `entries`: run name -> {"scores": experiments.scores(...) plus wall_time_s, "flags": its
    distill flags, "snapshot": the generator snapshot evaluated}. Parameter counts come from the shipped teacher
    (`lora_parameter_count` and `lora_targets`, shapes only) and are checked against the tensors in each snapshot."""
    import math
    import statistics

    from safetensors import safe_open

    from simcli.nets.lora import lora_parameter_count, lora_targets
    from simcli.teachers.registry import load_teacher

    net = load_teacher("digits").denoiser
    full = sum(p.numel() for p in net.parameters())
    shapes = [tuple(layer.weight.shape) for _, layer in lora_targets(net)]
    doc: dict[str, Any] = {"teacher_params": full, "lora_target_layers": len(shapes),
                           "lora_target_weight_params": sum(math.prod(s) for s in shapes), "runs": {}}
    for name, entry in entries.items():
        flags = entry["flags"]
        rank = int(flags[flags.index("--lora-rank") + 1]) if "--lora-rank" in flags else None
        lr = float(flags[flags.index("--lr") + 1]) if "--lr" in flags else default_lr
        with safe_open(str(entry["snapshot"]), framework="pt") as f:
            in_file = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        trainable = lora_parameter_count(shapes, rank) if rank else full
        records = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        status = [r for r in records if r.get("kind") == "status" and r["kimg"] <= kimg + 1]  # not a resumed tail
        spk = [r["sec_per_kimg"] for r in status]
        doc["runs"][name] = {
            "rank": rank, "lr": lr, "flags": flags, "trainable_params": trainable, "trainable_share": trainable / full,
            "full_rank_layers": sum(rank >= min(s[0], math.prod(s[1:])) for s in shapes) if rank else None,
            "snapshot": Path(entry["snapshot"]).name, "snapshot_bytes": Path(entry["snapshot"]).stat().st_size,
            "snapshot_params": in_file,
            "sec_per_kimg": statistics.median(spk) if spk else None,
            "sec_per_kimg_mean": statistics.fmean(spk) if spk else None,
            "load_avg_mean": statistics.fmean(r["load_avg"] for r in status) if status else None,
            "busy_share": sum(bool(r.get("cpu_busy")) for r in status) / len(status) if status else None,
            **entry["scores"]}
        if rank and in_file != trainable:
            raise SystemExit(f"{name}: {in_file} parameters in {entry['snapshot']}, {trainable} expected")
    return doc


def _fid_cells(g: dict, ref: str) -> str:
    a, b = g[f"fid_{ref}_per_seed"]
    return f"{a:.3f} / {b:.3f} / **{g[f'fid_{ref}']:.3f}**"


def lora_section(doc: dict) -> str:
    """The generated part of RESULTS.md's section (e): the table and what follows from it mechanically."""
    full, runs = doc["teacher_params"], doc["runs"]
    base, adapted = runs["sim-pseudo-huber"], doc["lora_target_weight_params"]
    lines = ["## (e) LoRA against full fine-tuning at equal images seen", "",
             f"Measured by `python examples/digits/experiments.py --parts e` ({doc['kimg']:g} kimg per run, digits "
             f"preset, {doc['n']} samples per evaluation, seed sets {' and '.join(map(str, doc['seed_sets']))}; "
             f"runs {doc['parallel']} at a time, one thread each). The full-weight row is the SIM pseudo-Huber run "
             f"of (b) (trained once, shared with (b)). With `--lora-rank R` the generator and the online model each "
             f"train rank-R adapters (alpha = R, scale 1; a layer's rank is clamped to min(out, fan_in)) of the "
             f"teacher's {doc['lora_target_layers']} linear and convolution layers (`simcli.nets.lora.lora_targets`: "
             f"{adapted:,} of the teacher's {full:,} parameters; biases, norm scales and the rest, "
             f"{full - adapted:,}, stay frozen) over one shared frozen copy of the teacher. "
             "Trainable parameters are per network (the online model trains as many again); the snapshot is the "
             "generator file `simcli sample` and `simcli eval` read (adapters only for LoRA runs, their count "
             "checked against the file's tensors); sec/kimg is the median of the run's status records.", "",
             "| run | rank | lr | trainable params per network | FID vs train (seed set 0 / 100000 / **mean**) | "
             "FID vs held-out (0 / 100000 / **mean**) | IS | sec/kimg | snapshot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, g in runs.items():
        label = f"{name} (full)" if g["rank"] is None else name
        lines.append(f"| {label} | {g['rank'] or 'all weights'} | {g['lr']:g} | {g['trainable_params']:,} "
                     f"({100 * g['trainable_share']:.1f}%) | {_fid_cells(g, 'train')} | {_fid_cells(g, 'test')} | "
                     f"{g['is']:.3f} | {g['sec_per_kimg']:.1f} | {g['snapshot_bytes'] / 1e6:.2f} MB |")
    lines += ["", "![FID against images seen (in-training evaluations, 2,000 samples)](compare-e.png)", ""]
    for name, g in runs.items():
        if g["rank"] is None:
            continue
        diff = g["fid_train"] - base["fid_train"]
        noise = g["fid_train_spread"] + base["fid_train_spread"]
        verdict = "within" if abs(diff) <= noise else ("worse than" if diff > 0 else "better than")
        lines.append(f"- {name}: FID vs train {g['fid_train']:.3f} against {base['fid_train']:.3f} for full "
                     f"({g['fid_train'] / base['fid_train']:.2f}x; {verdict} the two runs' seed-set spread, "
                     f"+- {noise:.3f}); {g['trainable_params'] / full:.2f}x the full parameter count, adapters of "
                     f"full rank in {g['full_rank_layers']} of {doc['lora_target_layers']} layers; "
                     f"{g['sec_per_kimg'] / base['sec_per_kimg']:.2f}x full's sec/kimg.")
    return "\n".join(lines)


def merge_section(here: Path, key: str, doc: dict, text: str) -> None:
    """Put `doc` under `key` in here/results.json and `text` between part `key`'s markers in here/RESULTS.md
    (appended when they are absent); everything else in both files is kept as it is."""
    path = here / "results.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res[key] = doc
    path.write_text(json.dumps(res, indent=2) + "\n")
    md = here / "RESULTS.md"
    begin, end = f"<!-- part {key}: written by experiments.py -->", f"<!-- end of part {key} -->"
    old = md.read_text() if md.is_file() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(new)
