"""srkd: super-resolution with knowledge distillation.

Public API (imported lazily, so `import srkd_cli` stays cheap):
`build_model`, `list_archs`, `load_model`, `load_checkpoint`, `save_checkpoint`,
`Upscaler`, `build_upscaler` (the Upscaler `srkd upscale` runs),
`upscale_files(UpscaleRequest(inputs=[...], output=...))` (all of `srkd upscale`; `UpscaleHooks`,
`UpscaleOutcome`), `evaluate_folder`, `load_pairs`, `get_zoo`, `read_image`, `write_image`, `imresize`.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "build_model": "archs",
    "list_archs": "archs",
    "load_model": "loader",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Upscaler": "inference",
    "build_upscaler": "backends",
    "upscale_files": "upscale",
    "UpscaleRequest": "upscale",
    "UpscaleHooks": "upscale",
    "UpscaleOutcome": "upscale",
    "evaluate_folder": "evaluate",
    "load_pairs": "evaluate",
    "get_zoo": "zoo",
    "read_image": "imaging.io",
    "write_image": "imaging.io",
    "imresize": "imaging.imresize",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'srkd_cli' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
