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
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

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
    """SqueezeSR with its 64-channel residual stream kept as two tensors: the expand1x1 and the
    expand3x3 channels. The same function, for graph runtimes (onnxruntime).

    The concatenation disappears without the merged conv's zero taps: each expand conv adds
    into its own half, and every conv that reads the stream becomes two convs whose sum
    onnxruntime folds into the second one (its Conv + Add fusion), as it does the ReLU after
    the squeeze. In eager PyTorch, where nothing fuses, the extra ops cost more than they save.
    """

    feature_names: Tuple[str, ...] = ()

    def __init__(self, model: SqueezeSR):
        super().__init__()
        self.scale = model.scale
        n1 = model.body[0].expand1x1.out_channels
        self.register_buffer("mean", model.mean.detach().clone(), persistent=False)
        hw, hb = model.head.weight.detach(), model.head.bias.detach()
        self.head_a, self.head_b = _conv(hw[:n1], hb[:n1], 1), _conv(hw[n1:], hb[n1:], 1)
        self.squeeze_a, self.squeeze_b = nn.ModuleList(), nn.ModuleList()
        self.expand_a, self.expand_b = nn.ModuleList(), nn.ModuleList()
        for blk in model.body:
            w, b = blk.squeeze.weight.detach(), blk.squeeze.bias.detach()
            self.squeeze_a.append(_conv(w[:, :n1], b, 0))
            self.squeeze_b.append(_conv(w[:, n1:], None, 0))
            self.expand_a.append(copy.deepcopy(blk.expand1x1))
            self.expand_b.append(copy.deepcopy(blk.expand3x3))
        tw = model.tail[0].weight.detach()
        tb = model.tail[0].bias.detach() + self.mean.view(3).repeat_interleave(self.scale * self.scale)
        self.tail_a, self.tail_b = _conv(tw[:, :n1], tb, 1), _conv(tw[:, n1:], None, 1)
        self.shuffle = nn.PixelShuffle(self.scale)

    def _forward(self, x: torch.Tensor, names):
        x = x - self.mean.to(x.dtype)
        ha, hb = self.head_a(x), self.head_b(x)
        a, b = ha, hb
        for sq_a, sq_b, ex_a, ex_b in zip(self.squeeze_a, self.squeeze_b, self.expand_a, self.expand_b):
            s = F.relu(sq_a(a) + sq_b(b))
            a = a + F.relu(ex_a(s))
            b = b + F.relu(ex_b(s))
        return self.shuffle(self.tail_a(a + ha) + self.tail_b(b + hb)), {}


def split_stream(model: nn.Module) -> nn.Module:
    """`SplitSqueezeSR` of a SqueezeSR (eval mode, the original untouched); other models as they are."""
    if isinstance(model, SplitSqueezeSR) or not isinstance(model, SqueezeSR):
        return model
    return SplitSqueezeSR(model).eval()


def receptive_radius(model: nn.Module) -> Optional[int]:
    """How many input pixels beyond a pixel can change its output, for models where that is small.

    SqueezeSR: one per 3x3 conv (head, one per block, tail). None for models with a wide
    (EDSR-T: ~60 px) or input-dependent (SwinIR: shifted windows) reach.
    """
    if isinstance(model, (FusedSqueezeSR, SqueezeSR)):
        return len(model.body) + 2
    if isinstance(model, SplitSqueezeSR):
        return len(model.squeeze_a) + 2
    return None


def reparameterize(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An equivalent, faster inference module for `model` (a SqueezeSR); other models come back as they are.

    The result is in eval mode on the original's device; the original is not modified.
    """
    if isinstance(model, FusedSqueezeSR) or not isinstance(model, SqueezeSR):
        return model
    return FusedSqueezeSR(model, channels_last=channels_last).eval()


fuse = reparameterize

__all__ = ["FusedSqueezeBlock", "FusedSqueezeSR", "SplitSqueezeSR", "fuse", "receptive_radius", "reparameterize",
           "split_stream"]
