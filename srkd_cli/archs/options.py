"""What architecture options accept: checked once, for every architecture, by `ArchSpec.config`.

Every option first gets the check its default implies (`by_default`): a whole number for an int
default (>= 1, or >= 0 where the default is 0), a finite number for a float default (> 0, or >= 0
where the default is 0), true/false for a bool. Each architecture then adds its own rules
(`ArchSpec.validate`: ranges, divisibility) with `whole`, `number` and `OptionError`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError


def show(value: Any, limit: int = 40) -> str:
    """A value as a user typed it, clipped (a 300-digit number stays one short line)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OptionError(ConfigError):
    """An architecture option set to a value it does not accept; names the option and what it accepts."""

    def __init__(self, option: str, value: Any, accepts: str, arch: Optional[str] = None):
        self.option, self.value, self.accepts, self.arch = option, value, accepts, arch
        super().__init__(f"{arch + ' ' if arch else ''}option {option}={show(value)}: accepts {accepts}")


def whole(cfg: Mapping[str, Any], key: str, least: int = 1) -> int:
    """cfg[key] if it is a whole number >= `least` (bools are not numbers here), else OptionError."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise OptionError(key, v, f"a whole number >= {least}")
    return v


def number(cfg: Mapping[str, Any], key: str, above: float = 0.0, least: Optional[float] = None) -> float:
    """cfg[key] if it is a finite number > `above` (>= `least` where given), else OptionError."""
    v = cfg[key]
    finite = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if least is not None:
        ok, what = finite and v >= least, f">= {least:g}"
    else:
        ok, what = finite and v > above, f"> {above:g}"
    if not ok:
        raise OptionError(key, v, f"a number {what}")
    return v


def by_default(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """The check each option's default implies (see the module's docstring)."""
    for key, default in defaults.items():
        if key not in cfg:
            continue
        if isinstance(default, bool):
            if not isinstance(cfg[key], bool):
                raise OptionError(key, cfg[key], "true or false")
        elif isinstance(default, int):
            whole(cfg, key, least=min(1, default))
        elif isinstance(default, float):
            number(cfg, key, least=0.0) if default == 0 else number(cfg, key, above=0.0)
        elif isinstance(default, str) and not isinstance(cfg[key], str):
            raise OptionError(key, cfg[key], "a word")


def no_more_rules(cfg: Dict[str, Any]) -> None:
    """`ArchSpec.validate`'s default: the checks the defaults imply are all there is."""


__all__ = ["OptionError", "by_default", "no_more_rules", "number", "show", "whole"]
