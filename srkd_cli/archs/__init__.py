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
from . import carn, compact, esrgan, repsr, squeezesr_fused
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


# Each architecture's option rules beyond the whole/positive numbers its defaults imply (`ArchSpec.validate`).
def _check_carn_m(cfg: Dict[str, Any]) -> None:
    n, groups = whole(cfg, "n_feats"), whole(cfg, "groups")
    if n % groups:
        raise OptionError("groups", groups, f"a divisor of n_feats ({n})")


def _check_attention_width(cfg: Dict[str, Any]) -> None:
    # IMDN's and BSRN's channel attention squeeze their features 16 times (IMDN: its 4 quarters)
    whole(cfg, "n_feats", least=16)


def _check_squeezesr(cfg: Dict[str, Any]) -> None:
    n, expand = whole(cfg, "n_feats", least=2), whole(cfg, "expand1x1")
    if expand >= n:
        raise OptionError("expand1x1", expand, f"a whole number from 1 to n_feats - 1 ({n - 1})")


def _check_repsr(cfg: Dict[str, Any]) -> None:
    whole(cfg, "layers", least=3)  # S1..S3 tap a third, two thirds and the end of the stack


def _check_esrgan(cfg: Dict[str, Any]) -> None:
    if whole(cfg, "unshuffle") not in (1, 2, 4):
        raise OptionError("unshuffle", cfg["unshuffle"], "1, 2 or 4 (Real-ESRGAN's pixel-unshuffle input)")


def _check_compact(cfg: Dict[str, Any]) -> None:
    if cfg["act"] not in compact.ACTS:
        raise OptionError("act", cfg["act"], ", ".join(compact.ACTS))


def _check_swinir(cfg: Dict[str, Any]) -> None:
    dim, heads = whole(cfg, "embed_dim"), whole(cfg, "num_heads")
    if dim % heads:
        raise OptionError("num_heads", heads, f"a divisor of embed_dim ({dim})")
    if int(dim * number(cfg, "mlp_ratio")) < 1:  # the MLP's hidden width
        raise OptionError("mlp_ratio", cfg["mlp_ratio"], f"a number >= 1/embed_dim ({1 / dim:.3g})")


def _esrgan_bytes(cfg: Dict[str, Any], s: int) -> int:
    """RRDBNet's peak float32 bytes per input pixel: the dense blocks' concatenations at the
    unshuffled size, then the nearest x2 stages, whose maps at the output size dominate.

    Measured with scripts/arch_memory.py (peak-RSS rise of one forward pass on a 128x128 input in a
    fresh process, one thread, CPU): 64 features / 23 blocks / growth 32: x4 23.0k B, x2 (unshuffle 2)
    3.9k; 32 / 2 / 16 (the fixture): x4 7.7k, x2 1.9k. This estimate: 25.0k, 4.2k, 12.6k, 2.1k."""
    n, g, u = cfg["n_feats"], cfg["growth"], cfg["unshuffle"]
    return int(4 * ((5 * n + 8 * g) / (u * u) + (s + 1.5) * n * s * s) + 12 * s * s)


def _compact_bytes(cfg: Dict[str, Any], s: int) -> int:
    """SRVGGNetCompact's peak float32 bytes per input pixel: a few feature maps (oneDNN reorders
    included) and the sub-pixel output with its nearest-neighbour base. Measured as for ESRGAN:
    64 features / 16 convs x4 1.5k B, x2 1.7k; 64 / 32 x4 1.2k, x2 1.5k; 16 / 4 x4 1.2k, x2 0.6k.
    This estimate: 2.8k, 2.0k, 2.8k, 2.0k, 1.4k, 0.7k."""
    return 4 * (7 * cfg["n_feats"] + 5 * 3 * s * s)


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
            validate=_check_carn_m,
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
            validate=_check_attention_width,
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
            validate=_check_attention_width,
            description="BSRN (Li et al. 2022), official weights, MIT: a lightweight teacher a CPU can run",
            feature_names=lambda cfg: BSRN.feature_names_for(cfg["blocks"]),
            # every block's output is kept for the final fusion, then concatenated once more; measured
            # 6.1 KB per pixel at x2 and x4 (n_feats 64, 8 blocks) against 6.5 / 7.5 KB here
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (2 * cfg["blocks"] + 8) + 7 * 12 * s * s,
            # fp16 is safe: its largest activation over Set14 is about 95 (x2 and x4), far below 65504,
            # and the CCA's squares run in float32 under autocast
            supports_half=True,
            # its blueprint convs are depthwise: bf16 autocast measured no faster (x0.98, idle 2-core AMX)
            cpu_bf16_train=False,
        ),
        ArchSpec(
            name="squeezesr",
            cls=SqueezeSR,
            defaults=dict(n_feats=64, blocks=3, squeeze=16, expand1x1=32),
            detect=_detect_squeezesr,
            validate=_check_squeezesr,
            description="SqueezeSR student (paper 1): 3 fire-style squeeze blocks",
            feature_names=lambda cfg: tuple(f"S{i + 1}" for i in range(cfg["blocks"])),
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 11 + 7 * 12 * s * s,
            train_defaults={"patch": 48, "lr": 1e-3},
            fused_form=squeezesr_fused.reparameterize,
            graph_form=squeezesr_fused.for_graph_runtime,
            receptive_radius=squeezesr_fused.receptive_radius,
            int8=squeezesr_fused.int8_form,
            expandable=True,
        ),
        ArchSpec(
            name="repsr",
            cls=RepSR,
            defaults=dict(n_feats=16, layers=9),
            detect=_detect_repsr,
            validate=_check_repsr,
            description="RepSR (srkd): a plain 3x3-conv student trained re-parameterised (--reparam), SESR-style",
            caveat="repsr is srkd's own plain network and weights, not the published RepSR (Wang et al., "
                   "ACM MM 2022) nor its weights (docs/zoo.md)",
            feature_names=lambda cfg: ("S1", "S2", "S3"),
            # two feature maps live at once, plus the s*s*3 sub-pixel output and its input copy
            bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 4 + 2 * 12 * s * s,
            train_defaults={"patch": 48, "lr": 1e-3},
            # 5x5 head and tail, one pixel per 3x3 layer: exact pieces pay, so auto runs onnxruntime
            receptive_radius=lambda m: len(m.body) + 4,
            int8=repsr.int8_form,
            expandable=True,
        ),
        ArchSpec(
            name="swinir",
            cls=SwinIR,
            defaults=dict(blocks=4, embed_dim=60, depth=6, num_heads=6, window_size=8, mlp_ratio=2.0, img_range=1.0),
            detect=_detect_swinir,
            validate=_check_swinir,
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
        ArchSpec(
            name="esrgan",
            cls=esrgan.RRDBNet,
            defaults=dict(n_feats=64, blocks=23, growth=32, unshuffle=1),
            detect=esrgan.detect,
            validate=_check_esrgan,
            description="ESRGAN / Real-ESRGAN RRDBNet (Wang et al. 2018/2021): most community upscaling models; "
                        "BasicSR and original ESRGAN key layouts, x2 pixel-unshuffle input",
            feature_names=lambda cfg: esrgan.RRDBNet.feature_names_for(cfg["blocks"]),
            bytes_per_pixel=lambda cfg, s: _esrgan_bytes(cfg, s),
            canonicalize=esrgan.canonicalize,
            # tiles start on the unshuffle grid, so a tile unshuffles as the whole image does
            window_multiple=lambda cfg: int(cfg["unshuffle"]),
            receptive_field=esrgan.receptive_field,
            layout=lambda sd: esrgan.LAYOUT_NAMES.get(esrgan.layout(sd) or ""),
        ),
        ArchSpec(
            name="compact",
            cls=compact.SRVGGNetCompact,
            defaults=dict(n_feats=64, convs=16, act="prelu"),
            detect=compact.detect,
            validate=_check_compact,
            description="Real-ESRGAN Compact, SRVGGNetCompact (realesr-general / animevideo): a plain 3x3-conv "
                        "network at the input size",
            feature_names=lambda cfg: ("T1", "T2", "T3") if cfg["convs"] >= 3 else (),
            bytes_per_pixel=lambda cfg, s: _compact_bytes(cfg, s),
            graph_form=compact.graph_form,
            # 3x3 convs at the input size only: exact cache-sized pieces pay, so auto runs onnxruntime
            receptive_radius=compact.receptive_radius,
            receptive_field=lambda cfg, s: int(cfg["convs"]) + 2,
            int8=compact.int8_form,
            assumed=compact.assumed,
            layout=lambda sd: "Real-ESRGAN SRVGGNetCompact (body.N: convs at even N"
                              + (", PReLU slopes at odd N)" if compact.has_prelu(sd) else ", no PReLU)"),
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


__all__ = ["ARCHS", "ArchSpec", "SRModel", "SCALES", "build_model", "count_params", "detect_arch", "get_arch", "halo_radius",
           "list_archs", "spec_for"]
