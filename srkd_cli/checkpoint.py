"""Checkpoints: srkd's native safetensors files and foreign (official SwinIR) .pth files.

A native file describes itself: its safetensors metadata holds the architecture, the
config, the scale and the provenance. Foreign files are canonicalised in one place
(`canonical_state_dict`) and the architecture is inferred from key names and shapes.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Union

import torch

from .archs import ARCHS, ArchSpec, SRModel, detect_arch, get_arch
from .atomic import atomic_write
from .config import SCALES, or_list
from .errors import CheckpointError, ConfigError, InputError, SrkdError

if TYPE_CHECKING:
    from .zoo.schema import ModelEntry

FORMAT_VERSION = "1"
# Buffers some releases save although they are derived from the training img_size.
DERIVED_KEYS = ("attn_mask", "relative_position_index")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")


@dataclass
class LoadedModel:
    model: SRModel
    spec: ArchSpec
    config: Dict[str, Any]
    scale: int
    metadata: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None
    # What the file could not tell and the loader assumed (`ArchSpec.assumed`), one sentence each,
    # for the CLI to print as warnings; options the caller set are not among them.
    notes: List[str] = field(default_factory=list)
    entry: Optional[ModelEntry] = None  # the zoo entry `loader.load_model` found it by; None for a file
    _sha256: Optional[str] = field(default=None, repr=False)  # set where fetching already hashed the file

    @property
    def sha256(self) -> Optional[str]:
        """The file's sha256 (None without a file), hashed at most once: provenance and callers share it."""
        if self._sha256 is None and self.path is not None:
            from .zoo.cache import sha256_file

            self._sha256 = sha256_file(self.path)
        return self._sha256


def canonical_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Unwrap `params_ema`/`params`/`state_dict`, strip `module.`, drop size-derived buffers."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        if isinstance(obj, Mapping):
            found = f"keys {_few([str(k) for k in obj])}" if obj else "an empty dict"
        else:
            found = f"a {type(obj).__name__}"
        raise CheckpointError(f"{source}: no state dict found (expected tensors, or 'params'/'params_ema'; found {found})")
    sd = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if k.rsplit(".", 1)[-1] in DERIVED_KEYS:
            continue
        sd[k] = v
    return sd


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_raw(path: Path):
    """(state dict or wrapper, metadata) from a safetensors or torch file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9 and head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise around the one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as e:  # torch.load raises many kinds on a file that is not a checkpoint
        raise CheckpointError(f"{path}: {_why_unreadable(e)}") from None


def _why_unreadable(e: Exception) -> str:
    """One short line for a torch.load failure; torch's own message is a multi-line essay."""
    text = str(e)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code:  # weights-only mode stopped a pickle that would import or call something
        # (other "Weights only load failed" errors are mostly files that are no pickle at all)
        return f"refused to unpickle: it calls {code.group(1)}, and srkd loads only tensors"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = next((ln for ln in lines[1:] if not ln.startswith(("Please file", "Check the doc"))), "")
        detail = detail.replace("WeightsUnpickler error:", "").strip() or "unsupported content"
        return f"not a checkpoint srkd can read (weights-only unpickling failed: {_clip(detail)})"
    return f"not a checkpoint srkd can read ({_clip(lines[0]) if lines else type(e).__name__})"


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _few(keys: List[str], n: int = 3) -> str:
    """'a, b, c and 4 more': the first few names, then a count."""
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _misfit(model: SRModel, sd: Mapping[str, torch.Tensor]) -> List[str]:
    """What keeps `sd` from loading into `model`: tensors of another shape, missing and unexpected keys."""
    want = model.state_dict()
    shapes = [k for k in want if k in sd and sd[k].shape != want[k].shape]  # the model's order: weight before bias
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    problems = []
    if shapes:
        k = shapes[0]
        more = f" (and {_n(len(shapes) - 1, 'more tensor')} of another shape)" if len(shapes) > 1 else ""
        problems.append(f"{k} has shape {_shape(sd[k])}, the model needs {_shape(want[k])}{more}")
    if missing:
        problems.append(f"{_n(len(missing), 'missing key')}: {_few(missing)}")
    if extra:
        problems.append(f"{_n(len(extra), 'unexpected key')}: {_few(extra)}")
    return problems


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _build(path: Path, spec: ArchSpec, scale: int, config: Dict[str, Any], shapes_only: bool = False) -> SRModel:
    """The model a file describes; a description that cannot be built is the file's fault.

    `shapes_only` builds it on the "meta" device: its tensors' shapes, no memory, so that a small
    file claiming a huge model (n_feats=3000) is refused before anything that size is allocated."""
    try:
        if shapes_only:
            with torch.device("meta"):
                return spec.build(scale, **config)
        return spec.build(scale, **config)
    except CheckpointError:
        raise
    except SrkdError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        cfg = ", ".join(f"{k}={v}" for k, v in config.items())
        raise CheckpointError(f"{path}: describes a {spec.name} x{scale} ({cfg}) that cannot be built ({e})") from None


def load_checkpoint(
    path: Union[str, Path], scale: Optional[int] = None, device: Union[str, torch.device] = "cpu",
    overrides: Optional[Mapping[str, Any]] = None,
) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (eval mode, float32).

    `overrides` (`--set KEY=VALUE`) replace options of the configuration read from the file, for
    what its tensors cannot tell (a Compact model's ReLU or LeakyReLU); a value that contradicts
    the tensors is reported as a misfit like any other."""
    path = Path(path)
    overrides = dict(overrides or {})
    raw, meta = _read_raw(path)
    sd = canonical_state_dict(raw, str(path))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if meta.get("arch"):
        try:
            spec = get_arch(meta["arch"])
            config = spec.config(**json.loads(meta.get("config", "{}")))
            file_scale = int(meta["scale"])
        except SrkdError as e:  # e.g. an architecture a newer srkd wrote
            raise CheckpointError(f"{path}: srkd metadata: {e}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: broken srkd metadata ({e})") from None
    else:
        try:
            found = detect_arch(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if found is None:
            sample = ", ".join(f"{k} {_shape(v)}" for k, v in list(sd.items())[:3])
            raise CheckpointError(f"{path}: unknown architecture: {len(sd)} tensors such as {sample}; "
                                  f"srkd knows {', '.join(ARCHS)}")
        spec, config, file_scale = found
    notes = []
    if not meta.get("arch") and spec.assumed is not None:
        notes = [f"{path.name}: {why}" for key, why in spec.assumed(sd, config).items() if key not in overrides]
    if overrides:
        try:
            config = spec.config(**{**config, **overrides})
        except SrkdError as e:
            raise ConfigError(f"--set: {e}") from None
    if spec.canonicalize is not None:
        try:
            sd = spec.canonicalize(sd, scale if file_scale is None else file_scale)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if file_scale is None and scale is None:
        # The tensor that tells the scale is missing or odd: the scale it fits, else what does not fit.
        misfits = {s: _misfit(_build(path, spec, s, config, shapes_only=True), sd) for s in SCALES}
        fitting = [s for s in SCALES if not misfits[s]]
        if len(fitting) != 1:
            best = min(SCALES, key=lambda s: len(misfits[s]))
            if not misfits[best]:
                raise CheckpointError(f"{path}: fits {spec.name} {or_list([f'x{s}' for s in fitting])}: give --scale")
            same = all(m == misfits[best] for m in misfits.values())  # e.g. keys every scale needs are missing
            where = "" if same else f" at any scale (closest x{best})"
            raise CheckpointError(f"{path}: does not fit {spec.name}{where}: {'; '.join(misfits[best])}")
        file_scale = fitting[0]
    file_scale = scale if file_scale is None else file_scale
    if file_scale not in SCALES:
        raise CheckpointError(f"{path}: this {spec.name} checkpoint upscales x{file_scale}; "
                              f"srkd runs {or_list([f'x{s}' for s in SCALES])}")
    if scale is not None and scale != file_scale:
        raise CheckpointError(f"{path}: this {spec.name} checkpoint upscales x{file_scale}, not x{scale}")
    problems = _misfit(_build(path, spec, file_scale, config, shapes_only=True), sd)
    if problems:
        raise CheckpointError(f"{path}: does not fit {spec.name} x{file_scale}: {'; '.join(problems)}")
    model = _build(path, spec, file_scale, config)
    model.load_state_dict(sd, strict=False)  # _misfit found nothing missing, extra or of another shape
    model.eval().to(device)
    metadata = {k: v for k, v in meta.items() if k not in ("arch", "config", "scale")}
    return LoadedModel(model, spec, config, file_scale, metadata, path, notes)



def save_checkpoint(
    path: Union[str, Path],
    model: SRModel,
    arch: str,
    config: Mapping[str, Any],
    provenance: Optional[Mapping[str, Any]] = None,
    half: bool = False,
) -> Path:
    """Write a native, self-describing safetensors file atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    spec = get_arch(arch)
    dtype = torch.float16 if half else torch.float32
    sd = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": f"srkd/{FORMAT_VERSION}",
        "arch": spec.name,
        "scale": str(model.scale),
        "config": json.dumps(dict(config), sort_keys=True),
    }
    if provenance:
        meta["provenance"] = json.dumps(dict(provenance), sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
