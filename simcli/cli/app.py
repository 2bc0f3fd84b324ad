"""The root Typer app: subcommands, version, and the last-resort error handler."""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from simcli import __version__
from simcli.cli.compare import EPILOG as COMPARE_EPILOG
from simcli.cli.compare import compare
from simcli.cli.distill import EPILOG as DISTILL_EPILOG
from simcli.cli.distill import distill
from simcli.cli.errors import EXIT_INTERRUPTED, format_error
from simcli.cli.eval import EPILOG as EVAL_EPILOG
from simcli.cli.eval import eval_command
from simcli.cli.export import EPILOG as EXPORT_EPILOG
from simcli.cli.export import export_command
from simcli.cli.options import METAVARS
from simcli.cli.sample import EPILOG as SAMPLE_EPILOG
from simcli.cli.sample import sample
from simcli.runtime import prefer_passive_openmp

# click's exception base, whether typer uses the click package or its bundled copy (typer >= 0.20).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")



class ReadableHelpGroup(TyperGroup):
    """The root group: its --help is a flag without <bool> too."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


app = typer.Typer(
    name="simcli",
    cls=ReadableHelpGroup,
    help="One-step diffusion distillation with Score Implicit Matching (SIM), SiD and Diff-Instruct.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _metavar(command: str, param) -> str:
    """The help's metavar of one parameter: METAVARS, else by type (flags take no value and show none)."""
    name = param.opts[0] if param.opts else param.name
    if f"{command} {name}" in METAVARS or name in METAVARS:
        return METAVARS.get(f"{command} {name}", METAVARS.get(name))
    if getattr(param, "is_flag", False):
        return ""
    annotation = param.type_descriptor.annotation
    label = "PATH" if param.type_descriptor.is_path else {int: "N", float: "NUMBER"}.get(annotation, "TEXT")
    return label + ("..." if param.type_descriptor.is_list else "")


class ReadableHelpCommand(TyperCommand):
    """A command whose help shows plain metavars (KEY=VALUE, FILE, N) instead of typer's <list[str]>, <bool>."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None:
                param.metavar = _metavar(self.name, param)
            if isinstance(param, TyperArgument):  # typer shows an argument's type beside its metavar: drop it
                param.display_type_rich = lambda ctx: None

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""  # a flag: no <bool>
        return option


app.command("distill", epilog=DISTILL_EPILOG, cls=ReadableHelpCommand)(distill)
app.command("sample", epilog=SAMPLE_EPILOG, cls=ReadableHelpCommand)(sample)
app.command("eval", epilog=EVAL_EPILOG, cls=ReadableHelpCommand)(eval_command)
app.command("compare", epilog=COMPARE_EPILOG, cls=ReadableHelpCommand)(compare)
app.command("export", epilog=EXPORT_EPILOG, cls=ReadableHelpCommand)(export_command)


def _version(value: bool) -> None:
    if value:
        print(f"simcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit."),
) -> None:
    """One-step diffusion distillation with Score Implicit Matching (SIM), SiD and Diff-Instruct."""


def main() -> None:
    """Console entry point: run the app; parse errors and unexpected exceptions are one line too."""
    prefer_passive_openmp()  # before any command imports torch
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:  # bad flags or values, before any command runs
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "simcli"
        if exc.format_message():  # empty when no arguments were given and the help was shown instead
            print(format_error(exc.format_message(), f"see '{where} --help'"), file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("simcli: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        print("simcli: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - last resort, after every known error was mapped
        if os.environ.get("SIMCLI_DEBUG"):
            traceback.print_exc()
        print(format_error(f"internal error: {type(exc).__name__}: {exc}", "rerun with SIMCLI_DEBUG=1 and report it"), file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
