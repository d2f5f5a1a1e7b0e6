"""The `srkd` command line: a thin shell over the Python API.

Each subcommand lives in its own module and registers itself on `app`. `main` turns
errors a user can cause (SrkdError) into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import List, Optional

import click
import typer
from rich.markup import escape

from ..errors import SrkdError
from ..runtime.signals import Terminated
from .console import err_console, printable

try:  # newer Typer runs on a vendored copy of click, with its own exception classes
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older Typer: plain click
    _typer_click = click.exceptions

_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_USAGE = (click.UsageError, _typer_click.UsageError)
_CLICK = (click.ClickException, _typer_click.ClickException)

app = typer.Typer(
    name="srkd",
    help="Super-resolution with knowledge-distilled models: upscale, evaluate, train, distill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"srkd {__version__}")
        raise typer.Exit(0)


@app.callback()
def _srkd(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print srkd's version and exit.")) -> None:
    """Super-resolution with knowledge-distilled models: upscale, evaluate, train, distill."""


# The arguments of the invocation being run (`main(argv)` in-process, else sys.argv): what a
# training run records as its command.
_ARGS: List[str] = []


def invoked_args() -> List[str]:
    """The arguments `srkd` was given in this invocation (without --debug)."""
    return list(_ARGS)


# Registration order is the order `srkd --help` lists them in.
from . import upscale as _upscale  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401
from . import bench as _bench  # noqa: E402,F401
from . import export as _export  # noqa: E402,F401
from . import info as _info  # noqa: E402,F401


DEBUG_HELP = "Print the traceback of an internal error (also SRKD_DEBUG=1)."
RICH_HELP_COLUMNS = 100  # the narrowest terminal whose rich --help tables keep every option name whole


def _command() -> click.Command:
    """The click command for `app`, with --debug listed in every subcommand's --help. `main`
    takes --debug out of the arguments wherever it stands, so the option only shows there."""
    probe = typer.Typer()

    @probe.command()
    def _probe(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:  # pragma: no cover
        pass

    option = typer.main.get_command(probe).params[0]
    option.expose_value = False
    group = typer.main.get_command(app)
    # Below this width rich's option tables squeeze the option names (`--scale,--outsc…`);
    # click's plain help wraps the descriptions instead and never cuts a name.
    plain = shutil.get_terminal_size((80, 24)).columns < RICH_HELP_COLUMNS
    for sub in [group, *getattr(group, "commands", {}).values()]:
        if plain:
            sub.rich_markup_mode = None
        if sub is not group and not any(p.name == "debug" for p in sub.params):
            sub.params.append(option)
    return group


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; return the exit code (used by the console script and by tests)."""
    out = sys.stdout = _WatchedStdout(sys.stdout)
    try:
        code = _main(argv, out)
        try:
            out.flush()  # what is still buffered must reach stdout too
        except OSError:
            pass
    finally:
        if sys.stdout is out:
            sys.stdout = out.stream
    return _no_stdout(out.failed) if out.failed else code


class _WatchedStdout:
    """sys.stdout, noting a write or flush that failed (`> /dev/full`), so that `main` can say
    stdout could not be written instead of reporting an internal error."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.failed: Optional[OSError] = None

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            self.failed = e
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            self.failed = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _no_stdout(e: OSError) -> int:
    if sys.stdout is sys.__stdout__:
        try:  # Python flushes stdout once more at exit: let that go to /dev/null, not to a second error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    err_console.print(f"[bold red]error:[/] could not write stdout ({escape(e.strerror or str(e))})", highlight=False,
                      soft_wrap=True)
    return 1


def _main(argv: Optional[List[str]], out: _WatchedStdout) -> int:
    debug = bool(os.environ.get("SRKD_DEBUG"))
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        debug = True
    _ARGS[:] = args
    try:
        rv = _command()(args=args, prog_name="srkd", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _EXIT as e:
        return e.exit_code
    except _ABORT:
        err_console.print("aborted")
        return 130
    except _USAGE as e:  # a missing or out-of-range option: one line, like every other user error
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `srkd` or a bare group: the help
            e.show()
            return e.exit_code
        hint = f" (srkd {e.ctx.info_name} --help)" if e.ctx is not None and e.ctx.info_name != "srkd" else ""
        err_console.print(f"[bold red]error:[/] {escape(printable(e.format_message()))}{hint}", highlight=False,
                          soft_wrap=True)
        return 2
    except _CLICK as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt as e:  # SIGTERM/SIGHUP too where a command turned them into one (runtime.signals)
        err_console.print(f"terminated by {e.name}" if isinstance(e, Terminated) else "interrupted")
        return getattr(e, "exit_code", 130)
    except SrkdError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(printable(str(e)))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:  # a bug, not a user error: still one line, traceback on request
        if out.failed is not None:
            return 1  # `main` says that stdout could not be written
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(printable(str(e)))} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 1


def run() -> None:
    sys.exit(main())
