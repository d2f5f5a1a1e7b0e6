"""What this CPU offers the training loop: native bfloat16 matrix units (AMX or AVX512-BF16).

oneDNN runs bf16 convolutions and matmuls on any AVX512 CPU, but only AMX and AVX512-BF16
make them faster than float32; elsewhere bf16 is emulated and slower. So `auto` precision
asks for the instructions themselves, not for oneDNN's willingness.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags() -> set:
    """The flags of /proc/cpuinfo (Linux); empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=None)
def cpu_bf16_units() -> str:
    """The bf16 matrix instructions this CPU reports (e.g. "amx_bf16"), or "" when none."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""  # arm64 BF16 exists, but srkd has not measured it pays there
    flags = _cpu_flags()
    return next((f for f in BF16_FLAGS if f in flags), "")
