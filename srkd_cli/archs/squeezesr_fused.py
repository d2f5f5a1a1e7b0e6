"""Inference-only re-parameterisations of SqueezeSR: the same function, cheaper to run.

`split_stream(model)` (for onnxruntime) is described at `SplitSqueezeSR`. `reparameterize(model)`
(for eager PyTorch) returns a `FusedSqueezeSR` whose output equals the original's to
float rounding (about 1e-6), built from the original's weights:

- each fire block's 1x1 and 3x3 expand convs become one 3x3 conv (the 1x1 kernel sits in
  the centre tap of a zero 3x3 kernel), so the block is squeeze -> ReLU -> conv -> ReLU -> +x
  with no `torch.cat` (which wrote, then re-read, a full 64-channel copy);
- the RGB mean added after the tail moves into the tail conv's bias (PixelShuffle only
  permutes channels: sub-pixel channel c*s*s+i lands in output channel c).

The merged expand conv does ~80% more multiply-adds than the 1x1 + 3x3 pair (the zero taps are
computed), yet on CPUs it is faster, because the pair's time is spent moving memory, not
multiplying: see docs/performance.md. MAC counts and floors are always reported for the
original model. The fused model has no named features (it is not for training).

`int8_form(model, crops, recipe)` is SqueezeSR's int8 path (`ArchSpec.int8`, quantize.py): the
fused model with its residual stream equalised (`equalize_stream`), stopped before the pixel
shuffle (`FusedSubpixel`).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.shuffle import unpair_columns
from .base import SRModel
from .squeezesr import SqueezeBlock, SqueezeSR


class FusedSqueezeBlock(nn.Module):
    """x + ReLU(conv3x3(ReLU(conv1x1(x)))), the fire block with its two expands merged."""

    def __init__(self, block: SqueezeBlock):
        super().__init__()
        self.squeeze = copy.deepcopy(block.squeeze)
        e1, e3 = block.expand1x1, block.expand3x3
        w = torch.zeros(e1.out_channels + e3.out_channels, e3.in_channels, 3, 3, dtype=e3.weight.dtype, device=e3.weight.device)
        w[: e1.out_channels, :, 1, 1] = e1.weight.detach()[:, :, 0, 0]
        w[e1.out_channels:] = e3.weight.detach()
        b = torch.cat([e1.bias.detach(), e3.bias.detach()])
        self.expand = nn.Conv2d(e3.in_channels, w.shape[0], 3, padding=1).to(w.device)
        with torch.no_grad():
            self.expand.weight.copy_(w)
            self.expand.bias.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.expand(F.relu(self.squeeze(x))))


class FusedSqueezeSR(SRModel):
    """SqueezeSR for inference: merged expands, mean folded into the tail (see module docstring).

    `channels_last` keeps weights and activations in NHWC, the layout oneDNN's CPU convolutions
    run fastest in; outputs are returned in the ordinary (contiguous NCHW) layout.
    """

    feature_names: Tuple[str, ...] = ()

    def __init__(self, model: SqueezeSR, channels_last: bool = False):
        super().__init__()
        self.scale = model.scale
        self.channels_last = channels_last
        self.register_buffer("mean", model.mean.detach().clone(), persistent=False)
        self.head = copy.deepcopy(model.head)
        self.body = nn.Sequential(*(FusedSqueezeBlock(b) for b in model.body))
        tail_conv: nn.Conv2d = copy.deepcopy(model.tail[0])
        with torch.no_grad():
            tail_conv.bias += self.mean.view(3).repeat_interleave(self.scale * self.scale)
        self.tail = nn.Sequential(tail_conv, nn.PixelShuffle(self.scale))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor, names):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.head(x - self.mean.to(x.dtype))
        if torch.is_grad_enabled():
            y = self.tail(self.body(h) + h)
        else:
            # In place where autograd is off: saves an allocation and a memory pass per op.
            t = h
            for blk in self.body:
                t = F.relu_(blk.expand(F.relu_(blk.squeeze(t)))).add_(t)
            y = self.tail(t.add_(h))
        return y.contiguous(), {}


def _conv(weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=padding).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(torch.zeros_like(conv.bias) if bias is None else bias)
    return conv


class SplitSqueezeSR(SRModel):
    """SqueezeSR re-arranged for graph runtimes (onnxruntime): the same function, fewer memory passes.

    onnxruntime folds `act(conv(x) + z)` into one convolution (its Conv + Add + ReLU fusion), but a
    fire block's `x + ReLU(conv(s))` and every `torch.cat` are passes of their own over 64-channel
    activations, and on a CPU those passes, not the multiply-adds, are where SqueezeSR's excess
    time went (docs/performance.md). So:

    - the 64-channel stream is kept as two tensors, `a` (the expand1x1 channels) and `b` (the
      expand3x3 ones): no concatenation and no zero taps, and each conv that reads the stream
      becomes two whose sum onnxruntime fuses;
    - the stream carries `x_i + h` (h = the head's output), so the global skip costs no add
      before the tail: the head's weights are doubled, and each squeeze after the first is
      corrected by `-squeeze(h)`, a 3x3 conv of the input composed from the 1x1 squeeze and
      the head (exact: both pad the same zero-padded input, and the squeeze is pointwise);
    - the first squeeze reads the input through that composition too, so it needs no head output;
    - the RGB mean is folded into the tail's bias;
    - with `pair_columns` (x2, for `Subpixel`), the tail computes two neighbouring columns per
      output pixel (`column_pairs` = 2, `_paired_conv`): with 12 output channels onnxruntime's
      AVX2 conv kernels run at ~60 % of their rate, with 24 they do not.

    `subpixel(x)` is the tail's output before the pixel shuffle (N, 3*s*s, h, w): a runtime that
    copies the result into place anyway can shuffle while it copies (`runtime.tiles.HaloTiles`).
    `raw_subpixel(x)` is what the tail computes (`runtime.shuffle.unpair_columns` turns it into `subpixel(x)`).
    """

    feature_names: Tuple[str, ...] = ()

    def __init__(self, model: SqueezeSR, pair_columns: Optional[bool] = False):
        super().__init__()
        self.scale = model.scale
        n1 = model.body[0].expand1x1.out_channels
        self.register_buffer("mean", model.mean.detach().clone(), persistent=False)
        hw, hb = model.head.weight.detach(), model.head.bias.detach()
        self.head_a, self.head_b = _conv(2 * hw[:n1], 2 * hb[:n1], 1), _conv(2 * hw[n1:], 2 * hb[n1:], 1)
        self.entry = nn.ModuleList()  # per block: squeeze(h) (block 1) or its correction -squeeze(h), from the input
        self.squeeze_a, self.squeeze_b = nn.ModuleList(), nn.ModuleList()  # blocks 2..n: squeeze of the stream
        self.expand_a, self.expand_b = nn.ModuleList(), nn.ModuleList()
        for i, blk in enumerate(model.body):
            w, b = blk.squeeze.weight.detach()[:, :, 0, 0], blk.squeeze.bias.detach()
            sign = 1.0 if i == 0 else -1.0
            self.entry.append(_conv(sign * torch.einsum("oc,cikl->oikl", w, hw), sign * (w @ hb) + b, 1))
            if i:
                self.squeeze_a.append(_conv(w[:, :n1, None, None], None, 0))
                self.squeeze_b.append(_conv(w[:, n1:, None, None], None, 0))
            self.expand_a.append(copy.deepcopy(blk.expand1x1))
            self.expand_b.append(copy.deepcopy(blk.expand3x3))
        tw = model.tail[0].weight.detach()
        tb = model.tail[0].bias.detach() + self.mean.view(3).repeat_interleave(self.scale * self.scale)
        if pair_columns is None:
            pair_columns = tw.shape[0] <= PAIR_MAX_CHANNELS
        self.column_pairs = 2 if pair_columns else 1
        if pair_columns:
            self.tail_a, self.tail_b = _paired_conv(tw[:, :n1], tb, self.scale), _paired_conv(tw[:, n1:], None, self.scale)
        else:
            self.tail_a, self.tail_b = _conv(tw[:, :n1], tb, 1), _conv(tw[:, n1:], None, 1)
        self.shuffle = nn.PixelShuffle(self.scale)

    def subpixel(self, x: torch.Tensor) -> torch.Tensor:
        return unpair_columns(self.raw_subpixel(x), x.shape[-1], self.scale, self.column_pairs)

    def raw_subpixel(self, x: torch.Tensor) -> torch.Tensor:
        """The tail's own output: `subpixel(x)`, in column pairs when `column_pairs` is 2."""
        x = x - self.mean.to(x.dtype)
        a, b = self.head_a(x), self.head_b(x)
        for i, (ex_a, ex_b) in enumerate(zip(self.expand_a, self.expand_b)):
            if i == 0:
                s = F.relu(self.entry[0](x))
            else:  # this order lets onnxruntime fold both adds and the ReLU into the convs
                s = F.relu(self.squeeze_a[i - 1](a) + self.squeeze_b[i - 1](b) + self.entry[i](x))
            a = a + F.relu(ex_a(s))
            b = b + F.relu(ex_b(s))
        return self.tail_a(a) + self.tail_b(b)

    def _forward(self, x: torch.Tensor, names):
        return self.shuffle(self.subpixel(x)), {}


class Subpixel(nn.Module):
    """A `SplitSqueezeSR` that stops at its tail's raw output, for export (`.scale` kept).

    `export_metadata` goes into every export of it (`runtime.graph.onnx_bytes`) and tells the runtime
    what that output is (`runtime.ort.OnnxModel` reads it).
    """

    def __init__(self, model: SplitSqueezeSR):
        super().__init__()
        self.model, self.scale = model, model.scale
        self.export_metadata = {"subpixel": True, "column_pairs": model.column_pairs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.raw_subpixel(x)


# Tails with at most this many output channels compute column pairs (SplitSqueezeSR): measured
# with onnxruntime on AVX2 (8-float blocks), where a conv with 2 blocks of output channels runs at
# ~60 % of the rate of one with 3-4 (docs/performance.md).
PAIR_MAX_CHANNELS = 16


def _paired_conv(weight: torch.Tensor, bias: Optional[torch.Tensor], scale: int) -> nn.Conv2d:
    """A 3x3 'same' sub-pixel conv as a (3, 4) conv of stride (1, 2) that outputs two columns per pixel.

    Output column j holds the original's columns 2j-1 (p=0) and 2j (p=1); with padding (1, 2)
    every tap sees what it saw in the original, zeros included, so the result is exact. Width
    out: W // 2 + 1 (column -1, and W when W is even, are extra). Channels are ordered
    (colour, sub-row, p, sub-column), so the four output pixels of one sub-row that a pair
    makes are neighbours in one channel group (`runtime.shuffle.shuffle_pairs_into` copies them as a run). A
    quarter of the taps are zero, yet the conv runs faster than the 3x3 whose few output
    channels it doubles (docs/performance.md).
    """
    c_out, c_in = weight.shape[:2]
    w = torch.zeros(c_out // (scale * scale), scale, 2, scale, c_in, 3, 4, dtype=weight.dtype, device=weight.device)
    by_pixel = weight.unflatten(0, (-1, scale, scale))  # (colour, sub-row, sub-column, c_in, 3, 3)
    w[:, :, 0, :, :, :, :3] = by_pixel
    w[:, :, 1, :, :, :, 1:] = by_pixel
    conv = nn.Conv2d(c_in, 2 * c_out, (3, 4), stride=(1, 2), padding=(1, 2), bias=bias is not None).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(w.flatten(0, 3))
        if bias is not None:
            conv.bias.copy_(bias.unflatten(0, (-1, scale, 1, scale)).expand(-1, -1, 2, -1).flatten())
    return conv


def split_stream(model: nn.Module, pair_columns: Optional[bool] = False) -> nn.Module:
    """`SplitSqueezeSR` of a SqueezeSR (eval mode, the original untouched); other models as they are.

    `pair_columns`: the tail in column pairs; None: where it has at most PAIR_MAX_CHANNELS
    outputs (x2). Pairs pay only where the runtime takes the raw output (`Subpixel`, as
    `for_graph_runtime` gives it): in a whole-image graph, undoing them costs more than they save.
    """
    if isinstance(model, SplitSqueezeSR) or not isinstance(model, SqueezeSR):
        return model
    return SplitSqueezeSR(model, pair_columns).eval()


def for_graph_runtime(model: nn.Module) -> nn.Module:
    """What a graph runtime (onnxruntime) runs for a SqueezeSR: the split stream, its tail in column
    pairs where that pays, stopped before the pixel shuffle (the runtime shuffles as it copies)."""
    return Subpixel(split_stream(model, pair_columns=None))


def receptive_radius(model: nn.Module) -> Optional[int]:
    """How many input pixels beyond a pixel can change its output, for models where that is small.

    SqueezeSR: one per 3x3 conv (head, one per block, tail). None for models with a wide
    (EDSR-T: ~60 px) or input-dependent (SwinIR: shifted windows) reach.
    """
    if isinstance(model, (FusedSqueezeSR, SqueezeSR)):
        return len(model.body) + 2
    if isinstance(model, SplitSqueezeSR):
        return len(model.expand_a) + 2
    return None


def reparameterize(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An equivalent, faster inference module for `model` (a SqueezeSR); other models come back as they are.

    The result is in eval mode on the original's device; the original is not modified.
    """
    if isinstance(model, FusedSqueezeSR) or not isinstance(model, SqueezeSR):
        return model
    return FusedSqueezeSR(model, channels_last=channels_last).eval()


class FusedSubpixel(nn.Module):
    """A FusedSqueezeSR stopped before its pixel shuffle, for export (`runtime.ort.OnnxModel` reads
    `export_metadata` and shuffles, or `HaloTiles` shuffles as it copies)."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        self.model, self.scale = fused, fused.scale
        self.export_metadata = {"subpixel": True, "column_pairs": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = m.head(x - m.mean.to(x.dtype))
        t = h
        for b in m.body:
            t = t + F.relu(b.expand(F.relu(b.squeeze(t))))
        return m.tail[0](t + h)


@torch.no_grad()
def equalize_stream(fused: nn.Module, crops: Sequence[np.ndarray], alpha: float = 1.0) -> nn.Module:
    """A copy of a FusedSqueezeSR whose residual-stream channel c is scaled by s_c ~ max_c^-alpha
    (max_c: the channel's largest |value| on `crops`, over every point of the stream), with 1/s_c
    folded into each conv that reads the stream. Exact in float (ReLU(s*z) = s*ReLU(z) for s > 0);
    with one 8-bit range per tensor, it evens out how many levels each channel gets."""
    m = copy.deepcopy(fused).eval()
    peak = torch.zeros(m.head.out_channels)
    for c in crops:
        x = torch.from_numpy(c)
        h = m.head(x - m.mean)
        t, points = h, [h]
        for b in m.body:
            t = t + F.relu(b.expand(F.relu(b.squeeze(t))))
            points.append(t)
        points.append(t + h)
        peak = torch.maximum(peak, torch.stack([p.abs().amax(dim=(0, 2, 3)) for p in points]).amax(0))
    s = peak.clamp_min(1e-6) ** (-alpha)
    s = s / s.log().mean().exp()  # geometric mean 1: weights keep their overall size
    m.head.weight.mul_(s.view(-1, 1, 1, 1))
    m.head.bias.mul_(s)
    for b in m.body:
        b.squeeze.weight.div_(s.view(1, -1, 1, 1))
        b.expand.weight.mul_(s.view(-1, 1, 1, 1))
        b.expand.bias.mul_(s)
    m.tail[0].weight.div_(s.view(1, -1, 1, 1))
    return m


def int8_form(model: nn.Module, crops: Sequence[np.ndarray], recipe: Dict[str, Any]) -> nn.Module:
    """What quantize.py quantises (`ArchSpec.int8`): fused, its stream equalised with `recipe["equalize"]`
    on the calibration `crops`, stopped before the pixel shuffle."""
    return FusedSubpixel(equalize_stream(reparameterize(model), crops, recipe["equalize"]))


__all__ = ["FusedSqueezeBlock", "FusedSqueezeSR", "FusedSubpixel", "PAIR_MAX_CHANNELS", "SplitSqueezeSR", "Subpixel",
           "equalize_stream", "for_graph_runtime", "int8_form", "receptive_radius", "reparameterize", "split_stream"]
