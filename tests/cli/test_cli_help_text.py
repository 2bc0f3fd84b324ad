"""Help that tells the truth: required options say so, every teacher name form is listed, defaults are shown,
and metavars are plain words (KEY=VALUE, FILE, N), not typer's <list[str]> or <bool>."""

from __future__ import annotations

import re

import pytest

from simcli.config.spec import RunSpec
from simcli.teachers.registry import known_teachers

COMMANDS = ("distill", "sample", "eval", "compare")


def _help(cli, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())  # one line: rich wraps long help at the panel's width


@pytest.mark.parametrize("command", [(), *((c,) for c in COMMANDS)], ids=["root", *COMMANDS])
def test_no_typer_internals_as_metavars(cli, command):
    text = _help(cli, *command)
    assert not re.search(r"<(bool|str|path|int|float|list\[[^\]]*\]|int range|float range)>", text), text


@pytest.mark.parametrize("command,metavars", [
    ("distill", ("--set KEY=VALUE", "--config FILE", "--out RUN_DIR", "--kimg KIMG", "--steps N", "--teacher TEACHER",
                 "--preset NAME", "--lr LR", "--device DEVICE")),
    ("sample", ("--out FILE|DIR", "--generator RUN_DIR|FILE", "--n N [x>=1]", "--grid FILE", "--churn NUMBER")),
    ("eval", ("--samples DIR|FILE", "--ref REF", "--feature-weights FILE", "--save-stats FILE", "--n N [x>=2]")),
    ("compare", ("RUN_DIR", "--plot FILE", "--sort KEY")),
])
def test_readable_metavars(cli, command, metavars):
    text = _help(cli, command)
    for metavar in metavars:
        option, _, value = metavar.partition(" ")
        assert re.search(re.escape(option) + r"\s+" + re.escape(value), text), (metavar, text)


def test_flags_show_no_metavar(cli):
    text = _help(cli, "distill")
    for flag in ("--json", "--dry-run", "--restart"):
        assert re.search(re.escape(flag) + r" [A-Z]", text), flag  # straight into the help text


@pytest.mark.parametrize("command,markers", [
    ("distill", ("--teacher TEACHER Required (unless the --config file names the teacher)",
                 "Required, except with --dry-run")),
    ("sample", ("[required]", "Required: this or --teacher", "Required: this or --generator")),
    ("eval", ("Required: this or --generator", "Required: this or --samples")),
    ("compare", ("[required]",)),
])
def test_required_options_are_marked(cli, command, markers):
    text = _help(cli, command)
    for marker in markers:
        assert marker in text, (marker, text)


@pytest.mark.parametrize("command", ["distill", "sample", "eval"])
def test_teacher_help_lists_every_teacher_form(cli, command):
    text = _help(cli, command)
    for name in known_teachers():
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (name, command)


def test_distill_defaults_are_shown_and_match_the_spec(cli):
    text = _help(cli, "distill")
    spec = RunSpec.model_fields
    loss = spec["loss"].annotation.model_fields
    for expected in (f"(default: {loss['method'].default})", f"(default: {loss['distance'].default})",
                     f"Run seed (default: {spec['seed'].default})", f"(default: {spec['device'].default})",
                     "(default: auto, chosen by the teacher)", "(default: the preset's; --dry-run shows it)"):
        assert expected in text, expected


@pytest.mark.parametrize("command,defaults", [
    ("sample", ("[default: 10000]", "[default: 4096]", "[default: auto]", "[default: 0]")),
    ("eval", ("[default: torch-fidelity]", "[default: 250]", "[default: auto]")),
])
def test_sample_and_eval_defaults_shown(cli, command, defaults):
    text = _help(cli, command)
    for default in defaults:
        assert default in text, default
