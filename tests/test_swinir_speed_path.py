"""SwinIR's training-speed changes (issue 32) against the reference arithmetic.

The default "exact" path (the shift as one index_select, the bias broadcast over images) must
stay bit-identical to the pre-change code (roll + partition, the bias and shift mask expanded per
image), forward and gradient; the opt-in "fused" path (scaled_dot_product_attention) must match
it to 1e-5 in fp32, forward and gradient, on a shifted block with a padded
(non-multiple-of-the-window) input.
"""

import importlib.util
import types
from pathlib import Path

import pytest
import torch

from srkd_cli.archs import build_model
from srkd_cli.archs.swinir import SwinTransformerBlock, WindowAttention

FUSED_TOL = 1e-5  # fp32, absolute on outputs and on gradients scaled to max |grad| = 1


def _legacy():
    """The pre-change code, kept once in the measuring script (its "before" rows)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "swinir_speed.py"
    spec = importlib.util.spec_from_file_location("swinir_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._legacy_attn_forward, mod._legacy_block_forward


_ref_attn, _ref_block = _legacy()


def _model(reference=False):
    torch.manual_seed(0)
    m = build_model("swinir", 2, blocks=1, depth=2, embed_dim=24, num_heads=3, window_size=8)
    with torch.no_grad():  # non-trivial bias tables, so the bias path is exercised
        for mod in m.modules():
            if isinstance(mod, WindowAttention):
                mod.relative_position_bias_table.normal_(0, 0.5)
    if reference:
        for mod in m.modules():
            if isinstance(mod, WindowAttention):
                mod.forward = types.MethodType(_ref_attn, mod)
            elif isinstance(mod, SwinTransformerBlock):
                mod.forward = types.MethodType(_ref_block, mod)
    return m


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.rand(2, 3, 21, 27)  # padded to 24x32: 3x4 windows, the shifted block sees all three regions


def _run(model, x, mode=None):
    if mode:
        model.set_attention(mode)
    model.zero_grad(set_to_none=True)
    out, feats = model.forward_with_features(x, ["F1"])
    (out.square().mean() + feats["F1"].abs().mean()).backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_exact_path_is_bit_identical_to_the_reference(x):
    ref_out, ref_grads = _run(_model(reference=True), x)
    out, grads = _run(_model(), x, "exact")
    assert torch.equal(out, ref_out)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)
    with torch.no_grad():  # inference: the default path
        assert torch.equal(_model()(x), _model(reference=True)(x))


def test_fused_path_matches_the_reference_in_fp32(x):
    ref_out, ref_grads = _run(_model(reference=True), x)
    out, grads = _run(_model(), x, "fused")
    assert (out - ref_out).abs().max().item() <= FUSED_TOL
    for k, g in ref_grads.items():
        scale = g.abs().max().clamp_min(1e-12)
        assert ((grads[k] - g).abs().max() / scale).item() <= FUSED_TOL, k


def test_exact_is_the_default_and_fused_is_opt_in(x, monkeypatch):
    m = _model()
    calls = []
    orig = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or orig(*a, **k))
    m(x).sum().backward()
    with torch.no_grad():
        m(x)
    assert not calls
    m.set_attention("fused")(x).sum().backward()
    assert len(calls) == 2  # one per block
    with pytest.raises(ValueError, match="attention must be one of"):
        m.set_attention("flash")
