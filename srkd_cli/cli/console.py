"""Shared rich consoles: results go to stdout, messages and errors to stderr."""

import unicodedata

from rich.console import Console

# emoji=False: rich would turn ":x:" in a file name or an option's value into an emoji
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def note(msg: str) -> None:
    """A `note:` line on stderr (file names and values escaped)."""
    _line("note:", msg)


def warn(msg: str) -> None:
    """A `warning:` line on stderr."""
    _line("[yellow]warning:[/]", msg)


def error(msg: str) -> None:
    """An `error:` line on stderr, for an error the command goes on after (a file of a batch)."""
    _line("[bold red]error:[/]", msg)


def _line(label: str, msg: str) -> None:
    from rich.markup import escape

    # File names as `ls` shows them: no control character reaches the terminal.
    err_console.print(f"{label} {escape(printable(msg))}", highlight=False, soft_wrap=True)


def table_console() -> Console:
    """Where result tables go: a terminal at its own width; logs and pipes (CI) get whole tables."""
    return console if console.is_terminal else Console(width=200)


def printable(text: str) -> str:
    """`text` with control and bidi characters escaped (`\\n`, `\\x1b`, `\\u202e`), as `ls` shows such
    file names: a name holding ESC or a newline can neither drive the terminal nor forge a line."""
    return "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
