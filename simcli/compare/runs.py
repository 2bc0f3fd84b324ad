"""Read simcli run directories (config.json + metrics.jsonl) and summarise them as plain dicts.

No torch here: comparing runs must work on a laptop that only holds copies of the run directories.
The metrics log is append-only and may be written while it is read; it is read with the engine's own
reader (simcli.rundir.metrics), which skips a half-written last line, as a resumed run does.

A run summary (summarise) holds: name, path, teacher, method, distance (sim only, else None), steps,
images_seen, kimg (of the latest record), wall_time_s (the latest elapsed_s), best_fid and
best_fid_kimg (minimum over the eval records, earliest on ties), last_fid and last_fid_kimg,
last_is_mean, last_is_std and last_is_kimg (latest eval record with a value), eval_backend,
eval_reference and eval_n (of the latest eval record), status_records and eval_records (counts).
Mixture runs log exact metrics instead of FID (simcli.eval.during_training; `mmd` is the unbiased MMD^2 of
simcli.eval.gmm_metrics.mmd_rbf): best_mmd and best_mmd_kimg,
best_mode_weight_l1 and best_mode_weight_l1_kimg (minimum, earliest on ties), last_mmd, last_mmd_kimg,
last_mode_weight_l1, last_precision and last_sw2 (latest eval record with a value).
Values not known yet are None; non-finite numbers become None so the summary is valid JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.rundir.layout import CONFIG_FILE, METRICS_FILE
from simcli.rundir.metrics import read_records

SORT_KEYS = ("fid", "name")


def _finite(value: Any) -> float | None:
    """A number as a float, or None for null, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def record_kimg(record: dict[str, Any]) -> float | None:
    """The record's kimg, from 'kimg' or else 'images_seen'."""
    kimg = _finite(record.get("kimg"))
    if kimg is None and _finite(record.get("images_seen")) is not None:
        kimg = record["images_seen"] / 1000
    return kimg


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics records, read as a resumed run reads them (a half-written last line is skipped)."""
    try:
        return read_records(run_dir)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {run_dir / METRICS_FILE}: {getattr(exc, 'strerror', None) or exc}") from None


def read_run(run_dir: Path) -> dict[str, Any]:
    """One run directory: {'path', 'config', 'status', 'eval'}; status and eval records sorted by kimg."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory", hint="pass run directories made by 'simcli distill --out'")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(f"{run_dir} is not a simcli run (no {CONFIG_FILE})", hint="pass run directories made by 'simcli distill --out'")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{config_path} is unreadable or corrupt") from None
    if not isinstance(config, dict) or not isinstance(config.get("teacher"), str):
        raise UsageError(f"{run_dir} is not a simcli run ({CONFIG_FILE} names no teacher)")
    records = read_metrics(run_dir)

    def by_kimg(kind: str) -> list[dict[str, Any]]:
        chosen = [r for r in records if r.get("kind") == kind and record_kimg(r) is not None]
        return sorted(chosen, key=record_kimg)  # stable: file order among equal kimg

    return {"path": run_dir, "config": config, "status": by_kimg("status"), "eval": by_kimg("eval")}


def run_names(paths: list[Path]) -> list[str]:
    """Directory names, with just enough parent directories to tell duplicates apart."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(pp[-d:]) for pp, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def load_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Read every run directory (each one once, in the order given) and name it; any bad one is an error."""
    unique: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, run_dirs):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    runs = [read_run(p) for p in unique]
    for run, name in zip(runs, run_names(unique), strict=True):
        run["name"] = name
    return runs


def _last_with(records: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((r for r in reversed(records) if _finite(r.get(key)) is not None), None)


def _best(records: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """(lowest value, its kimg) over the records with a finite value; the earliest on ties."""
    values = [(float(r[key]), record_kimg(r)) for r in records if _finite(r.get(key)) is not None]
    return min(values, key=lambda vk: vk[0], default=(None, None))


def _last_value(records: list[dict[str, Any]], key: str) -> float | None:
    record = _last_with(records, key)
    return _finite(record[key]) if record else None


def exact_metrics(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary fields of a mixture run's exact metrics (None where no record has them)."""
    best_mmd, best_mmd_kimg = _best(evals, "mmd")
    best_l1, best_l1_kimg = _best(evals, "mode_weight_l1")
    last_mmd = _last_with(evals, "mmd")
    return {
        "best_mmd": best_mmd, "best_mmd_kimg": best_mmd_kimg,
        "best_mode_weight_l1": best_l1, "best_mode_weight_l1_kimg": best_l1_kimg,
        "last_mmd": _finite(last_mmd["mmd"]) if last_mmd else None,
        "last_mmd_kimg": record_kimg(last_mmd) if last_mmd else None,
        "last_mode_weight_l1": _last_value(evals, "mode_weight_l1"),
        "last_precision": _last_value(evals, "precision"),
        "last_sw2": _last_value(evals, "sw2"),
    }


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of one loaded run (fields: see the module docstring)."""
    config, status, evals = run["config"], run["status"], run["eval"]
    loss = config.get("loss") if isinstance(config.get("loss"), dict) else {}
    method = loss.get("method")
    every = status + evals
    last = max(every, key=record_kimg, default=None)
    fids = [(r["fid"], record_kimg(r)) for r in evals if _finite(r.get("fid")) is not None]
    best = min(fids, key=lambda fk: fk[0], default=(None, None))  # ties: the earliest
    last_fid = _last_with(evals, "fid")
    last_is = _last_with(evals, "is_mean")
    last_eval = evals[-1] if evals else None
    timed = _last_with(sorted(every, key=record_kimg), "elapsed_s")
    return {
        "name": run["name"],
        "path": str(run["path"]),
        "teacher": config["teacher"],
        "method": method,
        "distance": loss.get("distance") if method == "sim" else None,
        "steps": last.get("step") if last else None,
        "images_seen": last.get("images_seen") if last else None,
        "kimg": record_kimg(last) if last else None,
        "wall_time_s": _finite(timed["elapsed_s"]) if timed else None,
        "best_fid": _finite(best[0]),
        "best_fid_kimg": best[1],
        "last_fid": _finite(last_fid["fid"]) if last_fid else None,
        "last_fid_kimg": record_kimg(last_fid) if last_fid else None,
        "last_is_mean": _finite(last_is["is_mean"]) if last_is else None,
        "last_is_std": _finite(last_is.get("is_std")) if last_is else None,
        "last_is_kimg": record_kimg(last_is) if last_is else None,
        "eval_backend": last_eval.get("backend") if last_eval else None,
        "eval_reference": last_eval.get("reference") if last_eval else None,
        "eval_n": last_eval.get("n") if last_eval else None,
        **exact_metrics(evals),
        "status_records": len(status),
        "eval_records": len(evals),
    }


def sort_summaries(summaries: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """Order by best FID (lowest first; then runs with only a best MMD^2, lowest first; then the rest, by name) or by
    name; None keeps the order given."""
    if key is None:
        return list(summaries)
    if key not in SORT_KEYS:
        raise UsageError(f"unknown sort key '{key}'", hint="use --sort fid or --sort name")
    if key == "name":
        return sorted(summaries, key=lambda s: s["name"])
    return sorted(summaries, key=lambda s: (s["best_fid"] is None, s["best_fid"] or 0.0, s["best_mmd"] is None,
                                            s["best_mmd"] or 0.0, s["name"]))


def compare_runs(run_dirs: list[Path], sort: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Load and summarise runs; returns (runs, summaries), both in the same (sorted) order."""
    if sort is not None and sort not in SORT_KEYS:
        raise UsageError(f"unknown sort key '{sort}'", hint="use --sort fid or --sort name")
    if not run_dirs:
        raise UsageError("no run directories given", hint="simcli compare RUN_DIR [RUN_DIR ...]")
    runs = load_runs(run_dirs)
    summaries = sort_summaries([summarise(r) for r in runs], sort)
    by_name = {r["name"]: r for r in runs}
    return [by_name[s["name"]] for s in summaries], summaries
