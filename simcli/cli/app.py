"""The root Typer app: subcommands, version, and the last-resort error handler."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from simcli import __version__
from simcli.cli.compare import EPILOG as COMPARE_EPILOG
from simcli.cli.compare import compare
from simcli.cli.distill import EPILOG as DISTILL_EPILOG
from simcli.cli.distill import distill
from simcli.cli.errors import EXIT_INTERRUPTED, format_error
from simcli.cli.eval import EPILOG as EVAL_EPILOG
from simcli.cli.eval import eval_command
from simcli.cli.sample import EPILOG as SAMPLE_EPILOG
from simcli.cli.sample import sample

# click's exception base, whether typer uses the click package or its bundled copy (typer >= 0.20).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="simcli",
    help="One-step diffusion distillation with Score Implicit Matching (SIM), SiD and Diff-Instruct.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("distill", epilog=DISTILL_EPILOG)(distill)
app.command("sample", epilog=SAMPLE_EPILOG)(sample)
app.command("eval", epilog=EVAL_EPILOG)(eval_command)
app.command("compare", epilog=COMPARE_EPILOG)(compare)


def _version(value: bool) -> None:
    if value:
        print(f"simcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """One-step diffusion distillation with Score Implicit Matching (SIM), SiD and Diff-Instruct."""


def main() -> None:
    """Console entry point: run the app; parse errors and unexpected exceptions are one line too."""
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
