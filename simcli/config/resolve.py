"""Resolve a run spec from its layers: method defaults < preset < config file < flags and --set.

Each layer is a nested dict. The result is a validated RunSpec plus the provenance of every leaf key,
so `--dry-run` can say where each value came from. Errors are UsageError with the offending key named.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simcli.config.files import MAX_DEPTH, TooComplex, check_shape, load_config_file, load_yaml, shown
from simcli.config.key_errors import SpecKeyError, source_hint
from simcli.config.methods import METHOD_DEFAULTS
from simcli.config.presets import PRESETS
from simcli.config.spec import KarrasGridNoise, KarrasUniformNoise, LognormalNoise, RunSpec
from simcli.errors import UsageError

_EXCLUSIVE = {("training", "duration_kimg"): ("training", "duration_steps")}
_EXCLUSIVE.update({v: k for k, v in _EXCLUSIVE.items()})


def parse_set_option(item: str) -> dict[str, Any]:
    """Turn 'a.b.c=value' into {'a': {'b': {'c': value}}}; the value is parsed as YAML (numbers, null, lists)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set expects key=value, got {shown(item)}", hint="for example --set online.optimizer.lr=1e-4")
    if key.count(".") >= MAX_DEPTH:
        raise UsageError(f"--set key {shown(key)} nests deeper than {MAX_DEPTH} levels", hint="spec keys nest 4 deep at most")
    try:
        value = load_yaml(raw) if raw.strip() else raw
        check_shape(value)
    except TooComplex as exc:
        raise UsageError(f"--set {shown(key)}: the value {exc}", hint="give a plain value, such as a number or a name") from None
    except (yaml.YAMLError, ValueError):  # not YAML (or a key that is no name inside it): the text as it is
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every leaf; an empty mapping sets nothing, and a `kind` comes before its siblings."""
    out = []
    for k, v in sorted(d.items(), key=lambda kv: kv[0] != "kind"):
        if isinstance(v, dict):
            out += _leaves(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def _get_path(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _set_path(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        nxt = d.get(part)
        if not isinstance(nxt, dict):
            nxt = d[part] = {}
        d = nxt
    d[path[-1]] = value


def _drop_path(d: dict[str, Any], path: tuple[str, ...]) -> None:
    for part in path[:-1]:
        d = d.get(part, {})
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


def merge_layers(layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge named layers in order; later layers win per leaf. Returns (merged, provenance of each leaf)."""
    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for source, layer in layers:
        leaves = _leaves(layer)
        keys = {path for path, _ in leaves}
        for path, value in leaves:
            other = _EXCLUSIVE.get(path)
            if other is not None and other not in keys:
                _drop_path(merged, other)  # a duration set here replaces the other kind from lower layers
                provenance.pop(".".join(other), None)
            # A noise distribution of another kind replaces the whole sub-mapping, not just its keys.
            if path[-1] == "kind" and _get_path(merged, path) != value:
                _set_path(merged, path[:-1], {})
                for key in [k for k in provenance if k.startswith(".".join(path[:-1]) + ".")]:
                    provenance.pop(key)
            _set_path(merged, path, copy.deepcopy(value))
            provenance[".".join(path)] = source
    return merged, provenance


NOISE_KINDS = {"lognormal": LognormalNoise, "karras-uniform": KarrasUniformNoise, "karras-grid": KarrasGridNoise}


def _format_validation_error(exc: ValidationError, provenance: dict[str, str]) -> UsageError:
    """The first error, in one line naming the key (a SpecKeyError, so the CLI can name a flag), with a bounded
    rendering of the value (a hostile one can be huge)."""
    err = exc.errors(include_url=False, include_context=False)[0]
    key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) and p not in NOISE_KINDS)
    if err["type"] == "extra_forbidden":
        parent = key.rpartition(".")[0]
        kind = next((p for p in err["loc"] if p in NOISE_KINDS), None)
        if kind is not None:
            fields = ", ".join(NOISE_KINDS[kind].model_fields)
            return UsageError(f"unknown spec key {shown(key)} for noise kind '{kind}'", hint=f"known keys: {fields}")
        return UsageError(f"unknown spec key {shown(key)}", hint=_known_keys_hint(parent))
    if err["type"] == "missing":
        return UsageError(f"spec key '{key}' is required")
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if not key:
        return UsageError(f"spec: {msg}", hint=source_hint(None))
    got = "" if isinstance(value, dict) else f" (got {shown(value)})"
    return SpecKeyError(key, f": {msg}{got}", source=provenance.get(key))


def _known_keys_hint(parent: str) -> str:
    model: Any = RunSpec
    for part in [p for p in parent.split(".") if p]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return "run 'simcli distill --dry-run' to see every key"
        model = annotation
    where = f"under '{parent}'" if parent else "at the top level"
    return f"known keys {where}: {', '.join(model.model_fields)}"


DATA_PRESET_SUFFIX = "-data"
"""`auto` picks a teacher's preset for runs with real data, <preset>-data, when there is one (digits-data)."""


def _with_data(preset: str, given: dict[str, Any]) -> str:
    """The preset `auto` stands for: the teacher's, or its -data variant when the command gives data.source."""
    data = given.get("data")
    if isinstance(data, dict) and data.get("source") is not None and preset + DATA_PRESET_SUFFIX in PRESETS:
        return preset + DATA_PRESET_SUFFIX
    return preset


TeacherNames = Callable[[str], tuple[str, str]]
"""Maps a teacher name to (the name as stored in the spec, the preset `auto` stands for); supplied by the
caller (the CLI passes `simcli.teachers.registry.describe_teacher_name`), so config knows no teacher kinds."""


def resolve_spec(
    teacher: str | None,
    describe_teacher: TeacherNames,
    preset: str | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    processes: int = 1,
    recorded: dict[str, Any] | None = None,
) -> tuple[RunSpec, dict[str, str]]:
    """Build the RunSpec from its layers; returns the spec and the provenance of each leaf key.

    `processes`: how many processes will share the run (torchrun's WORLD_SIZE), for `adapt_micro_batch`.
    `recorded`: the spec a run directory holds (its config.json), for `keep_recorded`."""
    file_layer = load_config_file(config_file) if config_file else {}
    flag_layer: dict[str, Any] = {}
    for path, value in _leaves(flags or {}):
        if value is not None:
            _set_path(flag_layer, path, value)
    if teacher is not None:
        flag_layer["teacher"] = teacher
    set_layers = [parse_set_option(item) for item in sets or []]
    upper = [("file", file_layer), ("flag", flag_layer)] + [("--set", s) for s in set_layers]
    merged_upper, _ = merge_layers(upper)
    teacher_name = merged_upper.get("teacher")
    if not isinstance(teacher_name, str) or not teacher_name:
        raise UsageError("no teacher given", hint="pass --teacher NAME (for example --teacher gmm-ring8)")
    teacher_name, auto_preset = describe_teacher(teacher_name)

    preset_given = preset is not None or file_layer.get("preset") is not None
    preset_name = preset or file_layer.get("preset") or "auto"
    file_layer.pop("preset", None)
    if preset_name == "auto":
        preset_name = _with_data(auto_preset, merged_upper)
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise UsageError(f"unknown preset {shown(preset_name)}", hint=f"known presets: auto, {', '.join(PRESETS)}")
    preset_layer = {k: v for k, v in PRESETS[preset_name].items() if k != "by_method"}

    loss_upper = merged_upper.get("loss")  # may be a non-mapping (--set loss=3); validation reports it below
    method = (loss_upper.get("method") if isinstance(loss_upper, dict) else None) or preset_layer.get("loss", {}).get("method") or "sim"
    if not isinstance(method, str) or method not in METHOD_DEFAULTS:
        raise UsageError(f"unknown method {shown(method)}", hint=f"known methods: {', '.join(METHOD_DEFAULTS)}")
    preset_method_layer = PRESETS[preset_name].get("by_method", {}).get(method, {})
    lower = [
        (f"method:{method}", METHOD_DEFAULTS[method]),
        (f"preset:{preset_name}", preset_layer),
        (f"preset:{preset_name}:{method}", preset_method_layer),
    ]
    merged, provenance = merge_layers(lower + upper)
    merged["teacher"] = teacher_name
    _name_guide(merged, describe_teacher)
    adapt_micro_batch(merged, provenance, processes)
    if method != "sim" and "loss.distance" in provenance:
        raise UsageError(
            f"a distance ({provenance['loss.distance']}: loss.distance) was given, but the method is {method}",
            hint="--distance applies to --method sim only; drop it",
        )
    try:
        spec = RunSpec.model_validate(merged)
    except ValidationError as exc:
        raise _format_validation_error(exc, provenance) from None
    if recorded is not None and not preset_given:
        return keep_recorded(spec, provenance, recorded, lower, upper, teacher_name)
    return spec, provenance


def _name_guide(merged: dict[str, Any], describe_teacher: TeacherNames) -> None:
    """guide.network as stored in the spec (a local pickle's absolute path), named like a teacher; unknown names
    are refused by describe_teacher."""
    guide = merged.get("guide")
    if isinstance(guide, dict) and isinstance(guide.get("network"), str):
        try:
            guide["network"] = describe_teacher(guide["network"])[0]
        except UsageError as exc:
            raise UsageError(f"guide network (--guide): {exc.message.replace('unknown teacher', 'unknown network')}",
                             hint="a guide is named as an EDM or EDM2 teacher is: an official name or file stem "
                                  "(edm2-img512-xs-uncond-2147483-0.045), or a .pkl") from None


RECORDED = "run"
"""The provenance of a value kept from the run directory's config.json (keep_recorded)."""


def keep_recorded(
    spec: RunSpec, provenance: dict[str, str], recorded: dict[str, Any], lower: list[tuple[str, dict[str, Any]]],
    upper: list[tuple[str, dict[str, Any]]], teacher_name: str,
) -> tuple[RunSpec, dict[str, str]]:
    """Resuming with the same command: the values a run directory recorded win over what method defaults and an
    `auto` preset give now (they may have changed since the run started), so a run resumes as it began; what the
    command gives (config file, flags, --set) wins over the record, and the run directory then refuses what may not
    change. Values kept from the record that differ from what the command alone gives have provenance RECORDED; a
    record that does not make a valid spec with the command's values is ignored (the run directory's own check
    reports the difference)."""
    given = {path for _, layer in upper for path, _ in _leaves(layer)}
    given |= {_EXCLUSIVE[p] for p in given if p in _EXCLUSIVE}
    layer = copy.deepcopy(recorded)
    for path in given | {("teacher",)}:
        _drop_path(layer, path)
    merged, merged_provenance = merge_layers([*lower, (RECORDED, layer), *upper])
    merged["teacher"] = teacher_name
    try:
        kept = RunSpec.model_validate(merged)
    except ValidationError:
        return spec, provenance
    now = dict(_leaves(spec.model_dump(mode="json")))
    out = dict(provenance)
    for path, value in _leaves(kept.model_dump(mode="json")):
        if merged_provenance.get(".".join(path)) == RECORDED and now.get(path) != value:
            out[".".join(path)] = RECORDED
    return kept, out


ADAPTED = "adapted to training.batch_size"
"""Marks the provenance of a micro-batch that a preset named and simcli changed (adapt_micro_batch)."""


def adapt_micro_batch(merged: dict[str, Any], provenance: dict[str, str], processes: int = 1) -> None:
    """A micro-batch from a preset (training.batch_gpu) that does not divide the batch each process computes gives way to the largest divisor of that batch not above it, marked in its provenance; a micro-batch the
    user gave (file, flag, --set) is left for validation to refuse."""
    training = merged.get("training")
    source = provenance.get("training.batch_gpu", "")
    if not isinstance(training, dict) or not source.startswith("preset:"):
        return
    batch, micro = training.get("batch_size"), training.get("batch_gpu")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (batch, micro)) or processes < 1:
        return
    per_process = batch // processes if batch % processes == 0 else batch
    if per_process % micro == 0:
        return
    training["batch_gpu"] = max(d for d in range(1, min(micro, per_process) + 1) if per_process % d == 0)
    provenance["training.batch_gpu"] = f"{source}, {ADAPTED}"


def spec_differences(old: dict[str, Any], new: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """Leaf keys whose values differ between two spec dicts, excluding the allowed ones."""
    a = dict((".".join(p), v) for p, v in _leaves(old))
    b = dict((".".join(p), v) for p, v in _leaves(new))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
