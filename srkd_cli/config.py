"""Facts and parsers shared across srkd, kept free of torch so that the zoo can use them too."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import ConfigError

SCALES = (2, 3, 4)  # the upscaling factors every architecture, the zoo and the CLI accept
# What `srkd upscale` runs when no model is named: at each scale the bundled model that scores
# highest among those as fast as SqueezeSR or faster (docs/results.md; tests/test_shipped_models.py).
DEFAULT_MODELS = {2: "repsr-x2", 3: "repsr-x3", 4: "repsr-x4"}
# The architectures of that fast tier, whose bundled models compete for the default.
FAST_ARCHS = ("squeezesr", "repsr")


def or_list(items: Sequence[Any]) -> str:
    """'2, 3 or 4': choices as a sentence says them."""
    words = [str(i) for i in items]
    return " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def a_or_an(word: str) -> str:
    """'an edsr-t', 'a swinir': a name with its article (by its first letter: srkd's names are read as words)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def check_scale(scale: Any, flag: str = "--scale") -> int:
    """`scale` if srkd has models for it, else a one-line ConfigError naming `flag`."""
    if scale not in SCALES:
        raise ConfigError(f"{flag} {scale}: use {or_list(SCALES)}")
    return scale


def parse_value(text: str) -> Any:
    """An option value as typed: '3' -> 3, '0.5' -> 0.5, 'true'/'False' -> bool, else the text."""
    word = text.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_setting(text: str) -> Tuple[str, Any]:
    """'embed-dim=48' -> ('embed_dim', 48); ValueError without '=' or a key (callers word the error)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ValueError(text)
    return key, parse_value(raw)


def parse_settings(items: Optional[Sequence[str]], option: str = "--set") -> Dict[str, Any]:
    """Repeated KEY=VALUE options -> {key: value}; a malformed one is a one-line ConfigError."""
    out: Dict[str, Any] = {}
    for item in items or []:
        try:
            key, value = parse_setting(item)
        except ValueError:
            raise ConfigError(f"{option} {item}: expected KEY=VALUE") from None
        out[key] = value
    return out
