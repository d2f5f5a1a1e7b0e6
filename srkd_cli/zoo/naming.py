"""The names srkd's own weights may take in the zoo, so that none passes for someone else's.

`swinir4-x{s}` is the official SwinIR-light release (and `swinir{k}-x{s}` its family's pattern):
weights trained by srkd never take such a name. srkd's own SwinIR-light models (paper 2) are

    swinir4-srkd-x{s}     srkd's 4-RSTB teacher, trained with L1 by research/gpu/gpu_run.py
    swinir-s{k}-kd-x{s}   a student with k RSTBs, distilled from it with paper 2's loss
    swinir-s{k}-x{s}      that student's no-KD twin: the same start and steps, L1 only

Every bundled name ends in `-x{scale}` of its weights, and a name the zoo gives to weights it
does not bundle (an official release: swinir4-x2, imdn-x2, ...) is never reused. Nothing here
imports torch (`srkd models` stays fast).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

OFFICIAL_SWINIR = re.compile(r"^swinir(\d+)-x(\d+)$")
SRKD_TEACHER = re.compile(r"^swinir(\d+)-srkd-x(\d+)$")
SRKD_STUDENT = re.compile(r"^swinir-s(\d+)(-kd)?-x(\d+)$")
KD_RECIPE = "paper2-alpha-kd"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def srkd_swinir_names(scale: int) -> str:
    return f"swinir4-srkd-x{scale} (teacher), swinir-s{{k}}-kd-x{scale} (students) or swinir-s{{k}}-x{scale} (no-KD twins)"


def check_bundle_name(name: str, arch: str, scale: int, config: Mapping[str, Any], provenance: Mapping[str, Any],
                      unbundled: Iterable[str] = ()) -> None:
    """Refuse (ConfigError, one line) a zoo name that misstates the weights or takes another's name.

    `unbundled`: the zoo's names whose weights srkd does not ship (official releases).
    """
    if not _NAME.match(name):
        raise ConfigError(f"{name}: a zoo name is lower-case letters, digits, '.', '_' and '-'")
    if not name.endswith(f"-x{scale}"):
        raise ConfigError(f"{name}: these weights upscale x{scale}, so the name ends in -x{scale}")
    if OFFICIAL_SWINIR.match(name):
        raise ConfigError(f"{name}: names the official SwinIR-light release; weights trained by srkd are "
                          f"{srkd_swinir_names(scale)}")
    if name in set(unbundled):
        raise ConfigError(f"{name}: the zoo's entry for official weights srkd does not ship; choose another name")
    blocks = config.get("blocks")
    kd = bool(provenance.get("teacher"))
    if m := SRKD_TEACHER.match(name):
        if arch != "swinir" or blocks != int(m.group(1)):
            raise ConfigError(f"{name}: names a SwinIR with {m.group(1)} RSTBs, these weights are {arch} "
                              f"with blocks={blocks}")
        return
    if m := SRKD_STUDENT.match(name):
        if arch != "swinir" or blocks != int(m.group(1)):
            raise ConfigError(f"{name}: names a SwinIR with {m.group(1)} RSTBs, these weights are {arch} "
                              f"with blocks={blocks}")
        if bool(m.group(2)) != (kd and provenance.get("recipe") == KD_RECIPE):
            what = (f"distilled ({provenance.get('recipe')} from {provenance.get('teacher')})" if kd
                    else "trained without a teacher")
            right = name.replace("-kd-x", "-x") if m.group(2) else name.replace(f"-x{scale}", f"-kd-x{scale}")
            raise ConfigError(f"{name}: these weights were {what}; "
                              f"{'a paper 2 student' if m.group(2) else 'a no-KD twin'} is named so only if it was, "
                              f"e.g. {right}")
        return
    if arch == "swinir":
        raise ConfigError(f"{name}: a SwinIR trained by srkd is named {srkd_swinir_names(scale)}")


def describe(name: str, arch: str, scale: int, config: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    """A one-line description for a bundled SwinIR of srkd's, else ''."""
    if SRKD_TEACHER.match(name):
        return f"SwinIR-light teacher (4 RSTBs) x{scale}, trained by srkd (L1{', output KD' if provenance.get('teacher') else ''})"
    m = SRKD_STUDENT.match(name)
    if m and m.group(2):
        return (f"SwinIR-light student ({m.group(1)} RSTBs) x{scale}, distilled by srkd from its 4-RSTB teacher "
                f"(paper 2, alpha {provenance.get('alpha', '?')})")
    if m:
        return f"SwinIR-light with {m.group(1)} RSTBs x{scale}: the no-KD twin of swinir-s{m.group(1)}-kd-x{scale} (L1 only)"
    return ""
