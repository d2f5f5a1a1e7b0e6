"""The architecture registry: one place that knows each architecture.

An `ArchSpec` holds the builder, its default configuration, how to recognise the
architecture from a state dict, the feature names its distillation losses use, what
inference must know (window multiple, half-precision safety) and what the fast backends may
do with it (faster equivalent forms, exact pieces, int8). The CLI, the zoo, checkpoint
loading, training, `backends.py` and tests all go through `ARCHS` / `build_model` / `spec_for`.

Each architecture's module declares its own spec and adds it with `register` when imported (the
imports at the end of this file); adding an architecture is adding its module and naming it there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import SCALES, check_scale
from ..errors import CheckpointError, ConfigError
from .base import SRModel
from .options import OptionError, by_default, no_more_rules

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    cls: Callable[..., SRModel]
    defaults: Dict[str, Any]
    detect: Callable[[StateDict], Optional[Tuple[Dict[str, Any], int]]]
    description: str
    # Peak float32 bytes of one forward pass per input pixel, output included (tile sizing).
    bytes_per_pixel: Callable[[Dict[str, Any], int], int]
    # config -> the names of its distillation features. None: the class's `feature_names_for(**config)`,
    # so the names are written once, where the model makes them.
    feature_names: Optional[Callable[[Dict[str, Any]], Tuple[str, ...]]] = None
    # Other names `get_arch` accepts (in lookup form: lower case, '-' for '_').
    aliases: Tuple[str, ...] = ()
    # Training defaults: LR patch side and learning rate.
    train_defaults: Dict[str, Any] = field(default_factory=lambda: {"patch": 48, "lr": 2e-4})
    # fp16 is unsafe where activations overflow 65504 (SwinIR's attention is known to).
    supports_half: bool = True
    # Convnets run faster channels-last with cuDNN and oneDNN alike; attention is mostly matmuls.
    channels_last: bool = True
    window_multiple: Callable[[Dict[str, Any]], int] = field(default=lambda cfg: 1)
    # Foreign files that need more than the generic clean-up (e.g. one upsampler per scale):
    # (state dict, requested scale or None) -> the state dict this architecture loads.
    canonicalize: Optional[Callable[[StateDict, Optional[int]], Dict[str, torch.Tensor]]] = None
    # Inference-only forms computing the same function, for the fast backends (archs/squeezesr_fused.py); None:
    # the model as it is. (model, channels_last) -> a faster eager module; model -> the module a
    # graph runtime (onnxruntime) runs, which may stop before its pixel shuffle (`export_metadata`).
    fused_form: Optional[Callable[[SRModel, bool], nn.Module]] = None
    graph_form: Optional[Callable[[SRModel], nn.Module]] = None
    # How many input pixels beyond a pixel can change its output, where that is small enough for
    # exact cache-sized pieces to pay (runtime.tiles.HaloTiles); None: wide or input-dependent reach.
    receptive_radius: Optional[Callable[[SRModel], int]] = None
    # The int8 path (quantize.py): (model, calibration crops, quantize.RECIPE) -> the module it
    # quantises, stopped before the pixel shuffle (`export_metadata`); None: no int8 path.
    int8: Optional[Callable[[SRModel, Sequence[Any], Dict[str, Any]], nn.Module]] = None
    # Whether `--reparam` may expand it for training (archs/reparam.py: plain convs only); the
    # inference-time opposite, fusing for speed, is `fused_form`.
    expandable: bool = False
    # Whether bf16 autocast speeds its training on a CPU with bf16 matrix units, so that
    # `--precision auto` picks it there (measured: docs/performance.md, "Training precision").
    cpu_bf16_train: bool = True
    # Whether, as a teacher, its forward measured faster under bf16 autocast on such a CPU at a cost far
    # below a student's error, so that `--precision auto` fills the teacher cache in bf16 there
    # (training/teacher_cache.py `fill_precision`; docs/training.md, "The teacher cache at user scale").
    cpu_bf16_fill: bool = False
    # A line `srkd models` prints under its table when this architecture is listed (e.g. a name
    # that another, published network also bears).
    caveat: Optional[str] = None
    # The rules of its options beyond those their defaults imply (archs/options.py): ranges,
    # divisibility. config -> None, or OptionError(option, value, what it accepts). It runs first,
    # so it reads each option it checks through `whole`/`number`, which check the type too.
    validate: Callable[[Dict[str, Any]], None] = no_more_rules
    # How many input pixels beyond a pixel can change its output in theory, counting its convolutions
    # (config, scale) -> pixels; None where attention or channel statistics reach the whole input.
    # Wider than `receptive_radius` may be; `Upscaler` sizes its default tile overlap from it.
    receptive_field: Optional[Callable[[Dict[str, Any], int], int]] = None
    # Options a foreign file's tensors cannot tell, which detection assumed: (state dict, config) ->
    # {option: the sentence saying so}; the loader passes each on unless the user set that option.
    assumed: Optional[Callable[[StateDict, Dict[str, Any]], Dict[str, str]]] = None
    # The key layout a foreign state dict is in, in words (`srkd info`); None: the architecture has one.
    layout: Optional[Callable[[StateDict], Optional[str]]] = None

    def __post_init__(self) -> None:
        if self.feature_names is None:
            object.__setattr__(self, "feature_names", lambda cfg: self.cls.feature_names_for(**cfg))

    def config(self, **overrides: Any) -> Dict[str, Any]:
        """The defaults with `overrides`, every option checked: one ConfigError line naming a bad one."""
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ConfigError(f"{self.name} has no option {sorted(unknown)}; options: {sorted(self.defaults)}")
        cfg = {**self.defaults, **overrides}
        try:
            self.validate(cfg)
            by_default(cfg, self.defaults)
        except OptionError as e:  # the rules name the option; the architecture is named here, once
            raise OptionError(e.option, e.value, e.accepts, self.name) from None
        return cfg

    def build(self, scale: int, **overrides: Any) -> SRModel:
        check_scale(scale, "scale")
        return self.cls(scale=scale, **self.config(**overrides))


# Registration order is detection order (`detect_arch`) and the order lists show.
_REGISTRY: Dict[str, ArchSpec] = {}
_ALIASES: Dict[str, str] = {}  # alias -> name
# The registered architectures by name, read-only: `register` and `unregister` change it.
ARCHS: Mapping[str, ArchSpec] = MappingProxyType(_REGISTRY)


def _lookup_form(name: str) -> str:
    return name.lower().replace("_", "-")


def register(spec: ArchSpec) -> ArchSpec:
    """Add `spec` to the registry and return it; ValueError if its name or an alias is taken, or
    its class already belongs to a registered architecture (`spec_for` tells them apart by class)."""
    names = (spec.name, *spec.aliases)
    odd = [n for n in names if n != _lookup_form(n)]
    if odd:
        raise ValueError(f"architecture {spec.name!r}: {', '.join(map(repr, odd))} is not in lookup form "
                         "(lower case, '-' for '_'), so get_arch could never find it")
    for n in names:
        owner = n if n in _REGISTRY else _ALIASES.get(n)
        if owner is not None or names.count(n) > 1:
            raise ValueError(f"architecture {spec.name!r}: the name {n!r} already names {owner or spec.name!r}")
    same = next((s for s in _REGISTRY.values() if s.cls is spec.cls), None)
    if same is not None:
        raise ValueError(f"architecture {spec.name!r}: its class {spec.cls.__name__} is already {same.name!r}'s")
    _REGISTRY[spec.name] = spec
    _ALIASES.update((a, spec.name) for a in spec.aliases)
    return spec


def unregister(name: str) -> ArchSpec:
    """Remove the architecture registered as `name` (with its aliases) and return its spec (tests)."""
    spec = _REGISTRY.pop(name)
    for a in spec.aliases:
        _ALIASES.pop(a, None)
    return spec


def get_arch(name: str) -> ArchSpec:
    key = _lookup_form(name)
    spec = _REGISTRY.get(key) or _REGISTRY.get(_ALIASES.get(key, ""))
    if spec is None:
        raise ConfigError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHS)}")
    return spec


def list_archs() -> List[str]:
    return list(ARCHS)


def build_model(name: str, scale: int, **config: Any) -> SRModel:
    """`build_model("swinir", scale=2, blocks=3)` -> an untrained model."""
    return get_arch(name).build(scale, **config)


def detect_arch(sd: StateDict) -> Optional[Tuple[ArchSpec, Dict[str, Any], Optional[int]]]:
    """Recognise a canonical state dict: (spec, full config, scale), or None.

    The scale is None for a file that holds several (CARN-M's multi-scale release; the
    architecture's `canonicalize` then picks one) or whose scale-telling tensor is missing or odd
    (the loader then reports what does not fit)."""
    for spec in ARCHS.values():
        try:
            found = spec.detect(sd)
        except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
            # A detect function that still indexes blindly: a clear line instead of an internal error.
            what = f"lacks {e.args[0]}" if isinstance(e, KeyError) else f"has unexpected shapes ({e})"
            raise CheckpointError(f"looks like {spec.name} but {what}") from None
        if found:
            cfg, scale = found
            try:
                return spec, spec.config(**cfg), scale
            except ConfigError as e:  # shapes that describe options the architecture does not accept
                raise CheckpointError(f"looks like {spec.name} but {e}") from None
    return None


def spec_for(model: nn.Module) -> Optional[ArchSpec]:
    """The registered architecture `model` is built from (by class, whatever its name or weights);
    None for anything else (a runtime, an already fused form)."""
    return next((spec for spec in ARCHS.values() if isinstance(model, spec.cls)), None)


def halo_radius(model: nn.Module) -> Optional[int]:
    """The halo exact pieces of `model` need (`ArchSpec.receptive_radius`); None where none is declared."""
    spec = spec_for(model)
    return spec.receptive_radius(model) if spec is not None and spec.receptive_radius is not None else None


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Each module registers its architecture when imported, in this order (see `_REGISTRY`); they import
# ArchSpec and `register` from here, hence after the definitions above.
from . import edsr_t, carn, imdn, bsrn, squeezesr, repsr, swinir, esrgan, compact  # noqa: E402,F401

__all__ = ["ARCHS", "ArchSpec", "SRModel", "SCALES", "build_model", "count_params", "detect_arch", "get_arch", "halo_radius",
           "list_archs", "register", "spec_for", "unregister"]
