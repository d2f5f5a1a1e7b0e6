"""Placeholder registration for subcommands not built yet: they say so and exit non-zero."""

from ..errors import NotBuiltError


def not_built(name: str, issue: str) -> None:
    raise NotBuiltError(f"`srkd {name}` is not built yet in this version ({issue})")
