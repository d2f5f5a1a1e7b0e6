"""Shared rich consoles: results go to stdout, messages and errors to stderr."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def table_console() -> Console:
    """Where result tables go: a terminal at its own width; logs and pipes (CI) get whole tables."""
    return console if console.is_terminal else Console(width=200)
