"""Training-time re-parameterisation (archs/reparam.py, `--reparam`): exact collapse, same graph, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from srkd_cli.archs import build_model, count_params, reparam
from srkd_cli.archs.squeezesr import SqueezeSR
from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.errors import ConfigError
from srkd_cli.training import TrainConfig, train


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("arch,scale", [("squeezesr", 2), ("squeezesr", 3), ("squeezesr", 4), ("repsr", 2), ("repsr", 4)])
def test_expanded_and_collapsed_forms_agree(arch, scale):
    torch.manual_seed(scale)
    plain = build_model(arch, scale)
    cls = type(plain)
    keys = {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.rand(2, 3, 21, 17)
    want = plain(x)
    expanded = reparam.expand(plain, 32)
    assert reparam.is_expanded(expanded) and count_params(expanded) > 4 * len(keys)
    assert (expanded(x) - want).abs().max() < 1e-5  # expanding keeps the function it was given
    _randomised(expanded, scale)  # every branch now carries its own weights
    with reparam.branches_run_separately(expanded):
        branchwise = expanded(x)
    collapsed_every_step = expanded(x)
    shipped = reparam.collapse(expanded)
    assert (branchwise - collapsed_every_step).abs().max() < 1e-5
    assert (shipped(x) - branchwise).abs().max() < 1e-5
    # The shipped form is the plain architecture: class, keys, shapes and parameter count.
    assert type(shipped) is cls and not reparam.is_expanded(shipped)
    assert {k: v.shape for k, v in shipped.state_dict().items()} == keys
    assert count_params(shipped) == count_params(build_model(arch, scale))
    assert reparam.is_expanded(expanded)  # collapse works on a copy


def test_every_branch_gets_a_gradient_through_the_collapsed_forward():
    torch.manual_seed(0)
    model = reparam.expand(build_model("squeezesr", 2, n_feats=8, squeeze=4, expand1x1=4), 8)
    model(torch.rand(1, 3, 12, 12)).square().mean().backward()
    named = dict(model.named_parameters())
    assert {"head.expand_in", "head.expand_out", "head.point", "head.edge_mix", "head.edge_scale",
            "body.0.squeeze.expand_in"} <= set(named)
    assert "body.0.squeeze.point" not in named  # 1x1 convs have no 1x1 or edge branch
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in named.values())


def test_only_plain_convolutions_expand():
    with pytest.raises(ConfigError, match="cannot expand"):
        reparam.RepConv2d(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), 4)
    with pytest.raises(ConfigError, match="at least 1"):
        reparam.expand(build_model("squeezesr", 2), 0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep-train")
    rng = np.random.default_rng(3)
    for i in range(3):
        low = rng.random((5, 5, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((48, 48), Image.BICUBIC)
        img.save(root / f"i{i}.png")
    return root


def _cfg(images, out, **kw) -> TrainConfig:
    base = dict(arch="squeezesr", scale=2, data=[images], out=out, arch_config=dict(n_feats=8, squeeze=4, expand1x1=4),
                steps=6, batch=2, patch=12, lr=2e-3, warmup=1, seed=1, device="cpu", quiet=True, log_every=1,
                ckpt_every=0, val_every=0, reparam=8, command="srkd train --reparam 8")
    base.update(kw)
    return TrainConfig(**base)


def test_a_reparam_run_exports_the_plain_architecture_and_resumes_exactly(images, tmp_path):
    straight = train(_cfg(images, tmp_path / "a", steps=6, ckpt_every=2))
    first = train(_cfg(images, tmp_path / "b", steps=6, ckpt_every=2, stop_after=3))
    assert not first.completed
    second = train(_cfg(images, tmp_path / "b", steps=6, ckpt_every=2, resume=True))
    sa, sb = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    loaded = load_checkpoint(second.final)
    assert type(loaded.model) is SqueezeSR and not reparam.is_expanded(loaded.model)
    assert set(loaded.model.state_dict()) == set(build_model("squeezesr", 2, n_feats=8, squeeze=4, expand1x1=4).state_dict())
    prov = json.loads(loaded.metadata["provenance"])
    assert prov["reparam"]["width"] == 8 and prov["reparam"]["forward"] == "collapsed every step"
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert state["reparam"] == 8 and "head.expand_in" in state["model"]
    with pytest.raises(ConfigError, match="--reparam 8, this command asks for --reparam 0"):
        train(_cfg(images, tmp_path / "b", steps=8, resume=True, reparam=0))


def test_reparam_is_refused_where_it_does_not_apply(images, tmp_path):
    with pytest.raises(ConfigError, match="swinir cannot be re-parameterised"):
        train(_cfg(images, tmp_path / "s", arch="swinir", arch_config=dict(blocks=1, embed_dim=12, depth=1, num_heads=2,
                                                                             window_size=4)))
    with pytest.raises(ConfigError, match="--reparam -1"):
        train(_cfg(images, tmp_path / "n", reparam=-1))



def test_repsr_starts_near_nearest_neighbour_and_round_trips_through_a_file(tmp_path, run_cli):
    """The plain family: recognised from its weights, upscaled by the CLI like any bundled model."""
    from srkd_cli.archs import detect_arch
    from srkd_cli.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("repsr", 3, n_feats=8, layers=4).eval()
    x = torch.rand(1, 3, 9, 11)
    near = torch.nn.functional.interpolate(x, scale_factor=3, mode="nearest")
    assert (model(x) - near).abs().mean() < 0.05
    spec, cfg, scale = detect_arch(model.state_dict())
    assert (spec.name, cfg, scale) == ("repsr", {"n_feats": 8, "layers": 4}, 3)
    path = save_checkpoint(tmp_path / "r.safetensors", model, "repsr", cfg)
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    code, _, err = run_cli("upscale", tmp_path / "in.png", "-o", tmp_path / "out.png", "--scale", 3, "--weights", path,
                           "--backend", "torch")
    assert code == 0, err
    assert Image.open(tmp_path / "out.png").size == (33, 27)


def test_repsr_runs_on_the_fast_cpu_backend_with_the_same_output():
    """Its declared receptive radius makes `--backend auto` cut exact pieces on onnxruntime."""
    from srkd_cli.backends import pick_backend, prepare

    torch.manual_seed(1)
    model = _randomised(build_model("repsr", 2, n_feats=8, layers=5), 1).eval()
    assert pick_backend(model, "cpu") == "onnxruntime"
    x = torch.rand(1, 3, 300, 200)  # larger than one onnxruntime piece (runtime.tiles.ORT_CPU_TILE)
    with torch.no_grad():
        want = model(x)
        got = prepare(model, "onnxruntime", "cpu", example=x, threads=2)(x)  # 2 threads: pieces with a halo
    assert got.shape == want.shape and (got - want).abs().max() < 1e-4
