import json

import pytest
import torch
from safetensors import safe_open

from srkd_cli.archs import build_model
from srkd_cli.checkpoint import canonical_state_dict, load_checkpoint, save_checkpoint
from srkd_cli.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def official(fixture_dir):
    io = torch.load(fixture_dir / "swinir_official_2rstb_x2_io.pt", weights_only=True)
    raw = torch.load(fixture_dir / "swinir_official_2rstb_x2.pth", weights_only=True)
    return fixture_dir / "swinir_official_2rstb_x2.pth", raw, io


def test_official_swinir_conformance(official):
    path, _, io = official
    lm = load_checkpoint(path)
    assert (lm.spec.name, lm.scale, lm.config["blocks"]) == ("swinir", 2, 2)
    with torch.no_grad():
        out, feats = lm.model.forward_with_features(io["input"], ["F1"])
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= 1e-5
    assert feats["F1"].shape == io["first_rstb_output"].shape
    assert (feats["F1"] - io["first_rstb_output"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"params_ema": sd},
        lambda sd: sd,
        lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["params_ema", "bare", "params+module", "state_dict+module"],
)
def test_official_layouts_load(official, tmp_path, wrap):
    _, raw, io = official
    p = tmp_path / "w.pth"
    torch.save(wrap(dict(raw["params"])), p)
    lm = load_checkpoint(p)
    with torch.no_grad():
        assert (lm.model(io["input"]) - io["output"]).abs().max().item() <= 1e-5


def test_buffers_from_other_img_size_are_rebuilt(official, tmp_path):
    _, raw, io = official
    sd = dict(raw["params"])
    for k in [k for k in sd if k.endswith("attn_mask")]:
        sd[k] = torch.zeros(64, 64, 64)  # as saved with img_size=64
    for k in [k for k in sd if k.endswith("relative_position_index")]:
        del sd[k]
    p = tmp_path / "w.pth"
    torch.save({"params": sd}, p)
    with torch.no_grad():
        assert (load_checkpoint(p).model(io["input"]) - io["output"]).abs().max().item() <= 1e-5


def test_params_ema_preferred_over_params():
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert canonical_state_dict({"params": a, "params_ema": b})["w"].item() == 1.0


@pytest.mark.parametrize("arch,cfg,scale", [("squeezesr", {}, 3), ("edsr-t", {"modules_per_block": 2}, 4), ("swinir", {"blocks": 1}, 2)])
def test_native_roundtrip_describes_itself(tmp_path, arch, cfg, scale):
    torch.manual_seed(1)
    model = build_model(arch, scale, **cfg).eval()
    p = save_checkpoint(tmp_path / "m.safetensors", model, arch, cfg, provenance={"steps": 7})
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == arch and meta["scale"] == str(scale)
    assert json.loads(meta["provenance"]) == {"steps": 7}
    lm = load_checkpoint(p)
    assert lm.spec.name == arch and lm.scale == scale
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(lm.model(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_half_storage_is_close(tmp_path):
    torch.manual_seed(2)
    model = build_model("squeezesr", 2).eval()
    p = save_checkpoint(tmp_path / "m.safetensors", model, "squeezesr", {}, half=True)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (load_checkpoint(p).model(x) - model(x)).abs().max().item() < 2e-3


def _bad_files(tmp_path, official):
    _, raw, _ = official
    sd = dict(raw["params"])
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    nodict = tmp_path / "nodict.pth"
    torch.save({"epoch": 3}, nodict)
    alien = tmp_path / "alien.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, alien)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in sd.items() if k != "norm.weight"}, missing)
    extra = tmp_path / "extra.pth"
    torch.save({**sd, "layers.0.extra.weight": torch.zeros(1)}, extra)
    badst = tmp_path / "bad.safetensors"
    badst.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return {
        text: "not a checkpoint",
        empty: "not a checkpoint",
        nodict: "no state dict",
        alien: "unknown architecture",
        missing: "1 missing key: norm.weight",
        extra: "1 unexpected key: layers.0.extra.weight",
        badst: "safetensors",
    }


def test_bad_checkpoints_give_one_clear_line(tmp_path, official):
    for path, msg in _bad_files(tmp_path, official).items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pth")


def test_scale_the_file_cannot_do(official):
    with pytest.raises(CheckpointError, match="upscales x2, not x4"):
        load_checkpoint(official[0], scale=4)
