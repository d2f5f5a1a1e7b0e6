"""Training-time re-parameterisation: every convolution of a plain convnet trained as a sum of
linear branches, exported as the one convolution they sum to (`srkd train/distill --reparam W`).

A `RepConv2d` replaces a k x k `nn.Conv2d` (stride 1, same padding, no groups) and holds:

- the base k x k kernel and bias; the other branches start random and the base absorbs their sum,
  so the expanded model computes exactly the conv it replaced (a trained model is a valid start);
- an expansion branch, k x k to W channels then 1 x 1 back (SESR's collapsible linear block);
- for 3 x 3 convs, RepVGG's 1 x 1 branch and ECB's edge branches: a 1 x 1 mix, then fixed Sobel-x,
  Sobel-y and Laplacian filters scaled per output channel.

Every branch is linear and its first stage has no bias, so zero padding commutes with the sum and
the branches collapse exactly into one k x k kernel. The forward pass builds that kernel from the
branch parameters (a few small einsums) and runs one convolution: a training step costs what a
plain step costs, while the gradient still reaches every branch ("collapse every step").
`forward_expanded` runs the branches one by one, for tests. `collapse(model)` swaps each
`RepConv2d` back to an `nn.Conv2d`: the same keys, shapes and parameter count as the plain model.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# ECB's fixed 3x3 edge filters: Sobel-x, Sobel-y, Laplacian.
EDGE_FILTERS = torch.tensor([
    [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
    [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
    [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
])


def _uniform(shape, bound: float, device, dtype) -> torch.Tensor:
    return torch.empty(shape, device=device, dtype=dtype).uniform_(-bound, bound)


def _plain(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1) and k[0] == k[1] and k[0] % 2 == 1
            and conv.padding == (k[0] // 2, k[0] // 2) and conv.padding_mode == "zeros" and conv.bias is not None)


class RepConv2d(nn.Module):
    """A k x k convolution trained as the sum of linear branches (module docstring)."""

    def __init__(self, conv: nn.Conv2d, width: int):
        super().__init__()
        if not _plain(conv):
            raise ConfigError(f"--reparam: cannot expand {conv} (needs stride 1, same padding, no groups, a bias)")
        cout, cin, k, _ = conv.weight.shape
        self.k, self.cin, self.cout = k, cin, cout
        dev, dt = conv.weight.device, conv.weight.dtype
        bound = 1.0 / math.sqrt(cin)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.expand_in = nn.Parameter(_uniform((width, cin, k, k), 1.0 / math.sqrt(cin * k * k), dev, dt))
        self.expand_out = nn.Parameter(_uniform((cout, width), 1.0 / math.sqrt(width), dev, dt))
        self.edges = k == 3
        if self.edges:
            self.point = nn.Parameter(_uniform((cout, cin), bound, dev, dt))
            self.edge_mix = nn.Parameter(_uniform((len(EDGE_FILTERS), cout, cin), bound, dev, dt))
            self.edge_scale = nn.Parameter(_uniform((len(EDGE_FILTERS), cout), 0.1, dev, dt))
            self.register_buffer("edge_filters", EDGE_FILTERS.to(device=dev, dtype=dt), persistent=False)
        # Every branch starts live (so each gets a gradient from the first step) and the base kernel
        # absorbs their sum: the expanded model computes exactly the plain conv it replaced.
        with torch.no_grad():
            self.weight -= self.kernel() - conv.weight

    def kernel(self) -> torch.Tensor:
        """The one k x k kernel the branches sum to (differentiable in every branch)."""
        w = self.weight + torch.einsum("om,mikl->oikl", self.expand_out, self.expand_in)
        if self.edges:
            w = w + F.pad(self.point[:, :, None, None], (1, 1, 1, 1))
            w = w + torch.einsum("fo,foi,fkl->oikl", self.edge_scale, self.edge_mix, self.edge_filters.to(w.dtype))
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, padding=self.k // 2)

    def forward_expanded(self, x: torch.Tensor) -> torch.Tensor:
        """Each branch on its own, then the sum: the over-parameterised network as trained in the papers."""
        p = self.k // 2
        y = F.conv2d(x, self.weight, self.bias, padding=p)
        y = y + F.conv2d(F.conv2d(x, self.expand_in, padding=p), self.expand_out[:, :, None, None])
        if self.edges:
            y = y + F.conv2d(x, self.point[:, :, None, None])
            for f in range(len(self.edge_filters)):
                mixed = F.conv2d(x, self.edge_mix[f][:, :, None, None])
                filt = self.edge_filters[f].expand(self.cout, 1, 3, 3)
                y = y + self.edge_scale[f][None, :, None, None] * F.conv2d(mixed, filt, padding=1, groups=self.cout)
        return y

    def to_conv(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.cin, self.cout, self.k, padding=self.k // 2).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.kernel())
            conv.bias.copy_(self.bias)
        return conv


def _replace(model: nn.Module, swap) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def expand(model: nn.Module, width: int) -> nn.Module:
    """Replace every convolution of `model` (in place) by a `RepConv2d` computing the same function."""
    if width < 1:
        raise ConfigError(f"--reparam {width}: the expansion width must be at least 1")
    return _replace(model, lambda m: RepConv2d(m, width) if isinstance(m, nn.Conv2d) else None)


def collapse(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `RepConv2d` collapsed into a plain `nn.Conv2d` (the architecture as shipped)."""
    out = copy.deepcopy(model)
    return _replace(out, lambda m: m.to_conv() if isinstance(m, RepConv2d) else None)


def is_expanded(model: nn.Module) -> bool:
    return any(isinstance(m, RepConv2d) for m in model.modules())


def describe(width: int) -> Dict[str, object]:
    branches: List[str] = ["kxk", f"kxk->{width}->1x1", "1x1 (3x3 only)", "sobel-x/sobel-y/laplacian (3x3 only)"]
    return {"width": width, "branches": branches, "forward": "collapsed every step"}


@contextmanager
def branches_run_separately(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every `RepConv2d` of `model` runs its branches one by one (`forward_expanded`):
    for tests and for timing the expanded form against collapse-every-step."""
    swapped = [m for m in model.modules() if isinstance(m, RepConv2d)]
    for m in swapped:
        m.forward = m.forward_expanded  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for m in swapped:
            del m.forward


__all__ = ["RepConv2d", "collapse", "describe", "expand", "branches_run_separately", "is_expanded"]
