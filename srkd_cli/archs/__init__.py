"""The architecture registry: one place that knows each architecture.

An `ArchSpec` holds the builder, its default configuration, how to recognise the
architecture from a state dict, the feature names its distillation losses use, what
inference must know (window multiple, half-precision safety) and what the fast backends may
do with it (faster equivalent forms, exact pieces, int8). The CLI, the zoo, checkpoint
loading, training, `backends.py` and tests all go through `ARCHS` / `build_model` / `spec_for`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import SCALES, check_scale
from ..errors import CheckpointError, ConfigError
from .base import SRModel
from . import carn, fuse, repsr
from .bsrn import BSRN
from .edsr_t import EDSRT
from .imdn import IMDN
from .options import OptionError, by_default, no_more_rules, number, whole
from .repsr import RepSR
from .squeezesr import SqueezeSR
from .swinir import SwinIR

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    cls: Callable[..., SRModel]
    defaults: Dict[str, Any]
    detect: Callable[[StateDict], Optional[Tuple[Dict[str, Any], int]]]
    description: str
    feature_names: Callable[[Dict[str, Any]], Tuple[str, ...]]
    # Peak float32 bytes of one forward pass per input pixel, output included (tile sizing).
    bytes_per_pixel: Callable[[Dict[str, Any], int], int]
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
    # Inference-only forms computing the same function, for the fast backends (archs/fuse.py); None:
    # the model as it is. (model, channels_last) -> a faster eager module; model -> the module a
    # graph runtime (onnxruntime) runs, which may stop before its pixel shuffle (`export_metadata`).
    reparameterize: Optional[Callable[[SRModel, bool], nn.Module]] = None
    graph_form: Optional[Callable[[SRModel], nn.Module]] = None
    # How many input pixels beyond a pixel can change its output, where that is small enough for
    # exact cache-sized pieces to pay (runtime.tiles.HaloTiles); None: wide or input-dependent reach.
    receptive_radius: Optional[Callable[[SRModel], int]] = None
    # The int8 path (quantize.py): (model, calibration crops, quantize.RECIPE) -> the module it
    # quantises, stopped before the pixel shuffle (`export_metadata`); None: no int8 path.
    int8: Optional[Callable[[SRModel, Sequence[Any], Dict[str, Any]], nn.Module]] = None
    # Whether `--reparam` may train it over-parameterised (archs/reparam.py: plain convs only).
    reparam: bool = False
    # Whether bf16 autocast speeds its training on a CPU with bf16 matrix units, so that
    # `--precision auto` picks it there (measured: docs/performance.md, "Training precision").
    cpu_bf16_train: bool = True
    # The rules of its options beyond those their defaults imply (archs/options.py): ranges,
    # divisibility. config -> None, or OptionError(option, value, what it accepts).
    validate: Callable[[Dict[str, Any]], None] = no_more_rules

    def config(self, **overrides: Any) -> Dict[str, Any]:
        """The defaults with `overrides`, every option checked: one ConfigError line naming a bad one."""
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ConfigError(f"{self.name} has no option {sorted(unknown)}; options: {sorted(self.defaults)}")
        cfg = {**self.defaults, **overrides}
        try:
            by_default(cfg, self.defaults)
            self.validate(cfg)
        except OptionError as e:  # the rules name the option; the architecture is named here, once
            raise OptionError(e.option, e.value, e.accepts, self.name) from None
        return cfg

    def build(self, scale: int, **overrides: Any) -> SRModel:
        check_scale(scale, "scale")
        return self.cls(scale=scale, **self.config(**overrides))


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _scale_from_channels(out_channels: Optional[int], per_pixel: int = 3) -> Optional[int]:
    if out_channels is None:
        return None
    s = math.isqrt(out_channels // per_pixel)
    return s if s * s * per_pixel == out_channels else None


# Detect functions read sizes through `_dim` and build configs with `_known`: a partial or damaged
# file must not raise KeyError here. What cannot be read falls back to the default (or a scale of
# None), and the loader then names the tensors that are missing or of the wrong shape.
def _dim(sd: StateDict, key: str, i: int = 0) -> Optional[int]:
    """Size `i` of tensor `key`; None where the file lacks it or it has too few dimensions."""
    t = sd.get(key)
    return int(t.shape[i]) if isinstance(t, torch.Tensor) and t.dim() > i else None


def _known(**cfg: Any) -> Dict[str, Any]:
    return {k: v for k, v in cfg.items() if v is not None}


def _detect_swinir(sd: StateDict):
    if "conv_first.weight" not in sd or "layers.0.residual_group.blocks.0.attn.qkv.weight" not in sd:
        return None
    if "upsample.0.weight" not in sd or "conv_before_upsample.0.weight" in sd:
        return None  # classical/real-world SwinIR upsamplers are not the lightweight model
    dim = _dim(sd, "conv_first.weight")
    table = "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"
    rows, hidden = _dim(sd, table), _dim(sd, "layers.0.residual_group.blocks.0.mlp.fc1.weight")
    cfg = _known(
        blocks=_count(sd, r"layers\.(\d+)\."),
        embed_dim=dim,
        depth=_count(sd, r"layers\.0\.residual_group\.blocks\.(\d+)\.") or None,
        num_heads=_dim(sd, table, 1),
        window_size=None if rows is None else (math.isqrt(rows) + 1) // 2,
        mlp_ratio=None if hidden is None or not dim else hidden / dim,
    )
    return cfg, _scale_from_channels(_dim(sd, "upsample.0.weight"))


def _detect_edsr_t(sd: StateDict):
    if "head.weight" not in sd or "body_conv.weight" not in sd or "body.0.body.0.body.0.weight" not in sd:
        return None
    nf = _dim(sd, "head.weight")
    cfg = _known(
        n_feats=nf,
        blocks=_count(sd, r"body\.(\d+)\."),
        modules_per_block=_count(sd, r"body\.0\.body\.(\d+)\."),
    )
    first, scale = _dim(sd, "tail.0.weight"), None
    if first is not None and nf and first == 9 * nf:
        scale = 3
    elif first is not None and nf and first == 4 * nf:
        scale = 4 if _dim(sd, "tail.2.weight") == 4 * nf else 2
    return cfg, scale


def _detect_imdn(sd: StateDict):
    if "fea_conv.weight" not in sd or "IMDB1.c1.weight" not in sd or "upsampler.0.weight" not in sd:
        return None
    cfg = _known(n_feats=_dim(sd, "fea_conv.weight"), blocks=_count(sd, r"IMDB(\d+)\."))
    return cfg, _scale_from_channels(_dim(sd, "upsampler.0.weight"))


def _detect_bsrn(sd: StateDict):
    if "fea_conv.pw.weight" not in sd or "B1.c1_r.pw.weight" not in sd:
        return None
    if "upsampler.upsampleOneStep.0.weight" not in sd:
        return None  # only the released `pixelshuffledirect` upsampler
    cfg = _known(n_feats=_dim(sd, "fea_conv.pw.weight"), blocks=_count(sd, r"B(\d+)\."))
    return cfg, _scale_from_channels(_dim(sd, "upsampler.upsampleOneStep.0.weight"))


def _detect_carn_m(sd: StateDict):
    if "entry.weight" not in sd or "b1.b1.body.0.weight" not in sd or "exit.weight" not in sd:
        return None
    n, per_group = _dim(sd, "entry.weight"), _dim(sd, "b1.b1.body.0.weight", 1)
    cfg = _known(n_feats=n, groups=n // per_group if n and per_group else None)
    if "upsample.up.body.0.weight" not in sd:
        return (cfg, None) if any(k.startswith("upsample.up2.") for k in sd) else None
    first = _dim(sd, "upsample.up.body.0.weight")
    scale = 3 if n and first == 9 * n else (4 if "upsample.up.body.3.weight" in sd else 2)
    return cfg, scale


def _detect_squeezesr(sd: StateDict):
    if "head.weight" not in sd or "body.0.squeeze.weight" not in sd:
        return None
    n, wide = _dim(sd, "head.weight"), _dim(sd, "body.0.expand3x3.weight")
    cfg = _known(
        n_feats=n,
        blocks=_count(sd, r"body\.(\d+)\."),
        squeeze=_dim(sd, "body.0.squeeze.weight"),
        # the two expands concatenate back to n_feats: either one tells the split
        expand1x1=_dim(sd, "body.0.expand1x1.weight") or (n - wide if n and wide else None),
    )
    return cfg, _scale_from_channels(_dim(sd, "tail.0.weight"))


def _detect_repsr(sd: StateDict):
    head, tail = _dim(sd, "head.weight"), _dim(sd, "tail.weight")
    if head is None or tail is None or _dim(sd, "body.0.weight", 3) != 3 or _dim(sd, "head.weight", 3) != 5:
        return None
    return dict(n_feats=head, layers=_count(sd, r"body\.(\d+)\.")), _scale_from_channels(tail)


ARCHS: Dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="edsr-t",
            cls=EDSRT,
            defaults=dict(n_feats=64, blocks=3, modules_per_block=9, res_scale=0.1),
            detect=_detect_edsr_t,
            description="EDSR-T teacher (paper 1): 3 residual blocks x 9 residual modules",
            feature_names=lambda cfg: tuple(f"T{i + 1}" for i in range(cfg["blocks"])),
            # at x4 the upsampler's wide convolutions at twice the input size dominate
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (10 + 3 * s * s) + 3 * 12 * s * s,
        ),
        ArchSpec(
            name="carn-m",
            cls=carn.CARNM,
            defaults=dict(n_feats=64, groups=4),
            detect=_detect_carn_m,
            description="CARN-M (Ahn et al. 2018), official weights: a mobile teacher, one file for x2/x3/x4",
            feature_names=lambda cfg: carn.CARNM.feature_names,
            # the cascades keep up to four concatenated copies of the features
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 14 + 7 * 12 * s * s,
            canonicalize=carn.canonicalize,
        ),
        ArchSpec(
            name="imdn",
            cls=IMDN,
            defaults=dict(n_feats=64, blocks=6),
            detect=_detect_imdn,
            description="IMDN (Hui et al. 2019), official weights: a lightweight teacher a CPU can run",
            feature_names=lambda cfg: IMDN.feature_names_for(cfg["blocks"]),
            # every block's output is kept for the final fusion, then concatenated once more
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (2 * cfg["blocks"] + 6) + 7 * 12 * s * s,
        ),
        ArchSpec(
            name="bsrn",
            cls=BSRN,
            defaults=dict(n_feats=64, blocks=8),
            detect=_detect_bsrn,
            description="BSRN (Li et al. 2022), official weights, MIT: a lightweight teacher a CPU can run",
            feature_names=lambda cfg: BSRN.feature_names_for(cfg["blocks"]),
            # every block's output is kept for the final fusion, then concatenated once more; measured
            # 6.1 KB per pixel at x2 and x4 (n_feats 64, 8 blocks) against 6.5 / 7.5 KB here
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (2 * cfg["blocks"] + 8) + 7 * 12 * s * s,
            # fp16 is safe: its largest activation over Set14 is about 95 (x2 and x4), far below 65504,
            # and the CCA's squares run in float32 under autocast
            supports_half=True,
        ),
        ArchSpec(
            name="squeezesr",
            cls=SqueezeSR,
            defaults=dict(n_feats=64, blocks=3, squeeze=16, expand1x1=32),
            detect=_detect_squeezesr,
            description="SqueezeSR student (paper 1): 3 fire-style squeeze blocks",
            feature_names=lambda cfg: tuple(f"S{i + 1}" for i in range(cfg["blocks"])),
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 11 + 7 * 12 * s * s,
            train_defaults={"patch": 48, "lr": 1e-3},
            reparameterize=fuse.reparameterize,
            graph_form=fuse.for_graph_runtime,
            receptive_radius=fuse.receptive_radius,
            int8=fuse.int8_form,
            reparam=True,
        ),
        ArchSpec(
            name="repsr",
            cls=RepSR,
            defaults=dict(n_feats=16, layers=9),
            detect=_detect_repsr,
            description="RepSR (srkd): a plain 3x3-conv student trained re-parameterised (--reparam), SESR-style",
            feature_names=lambda cfg: ("S1", "S2", "S3"),
            # two feature maps live at once, plus the s*s*3 sub-pixel output and its input copy
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 4 + 2 * 12 * s * s,
            train_defaults={"patch": 48, "lr": 1e-3},
            # 5x5 head and tail, one pixel per 3x3 layer: exact pieces pay, so auto runs onnxruntime
            receptive_radius=lambda m: len(m.body) + 4,
            int8=repsr.int8_form,
            reparam=True,
        ),
        ArchSpec(
            name="swinir",
            cls=SwinIR,
            defaults=dict(blocks=4, embed_dim=60, depth=6, num_heads=6, window_size=8, mlp_ratio=2.0, img_range=1.0),
            detect=_detect_swinir,
            description="SwinIR-light (paper 2): 4 RSTBs as teacher, 1-3 RSTBs as students",
            feature_names=lambda cfg: ("F1",),
            # the attention scores of every window dominate
            bytes_per_pixel=lambda cfg, s: 4 * (24 * cfg["embed_dim"] + 7 * cfg["num_heads"] * cfg["window_size"] ** 2)
            + 10 * 12 * s * s,
            train_defaults={"patch": 64, "lr": 2e-4},  # paper 2 and SwinIR
            supports_half=False,
            channels_last=False,
            window_multiple=lambda cfg: int(cfg["window_size"]),
        ),
    )
}


def get_arch(name: str) -> ArchSpec:
    key = name.lower().replace("_", "-")
    if key in ARCHS:
        return ARCHS[key]
    if key in ("edsrt", "edsr"):
        return ARCHS["edsr-t"]
    raise ConfigError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHS)}")


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
            return spec, spec.config(**cfg), scale
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


__all__ = ["ARCHS", "ArchSpec", "SRModel", "SCALES", "build_model", "count_params", "detect_arch", "get_arch", "halo_radius",
           "list_archs", "spec_for"]
