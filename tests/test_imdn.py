"""IMDN: the official checkpoints load as published, match the conformance fixture, score their
published Set5 figures, and serve as a teacher through the zoo's real download path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_upscale_reproduces_fixture, shared_path
from srkd_cli.archs import build_model, count_params, detect_arch
from srkd_cli.checkpoint import canonical_state_dict, load_checkpoint
from srkd_cli.zoo import get_zoo, sha256_file

sys.path.insert(0, str(Path(__file__).parent))
from test_zoo import env, hub, payload, write_zoo  # noqa: E402,F401  (fixtures)

PUBLISHED_SET5 = {2: 38.00, 3: 34.36, 4: 32.21}
PARAMS = {2: 694_404, 3: 703_059, 4: 715_176}


def teacher_file(scale: int) -> Path:
    return shared_path("teachers", f"IMDN_x{scale}.pth")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fresh_imdn_has_the_official_shapes(scale):
    model = build_model("imdn", scale)
    assert count_params(model) == PARAMS[scale]
    x = torch.rand(1, 3, 9, 11)
    out, feats = model.forward_with_features(x, ("T1", "T2", "T3", "B6"))
    assert out.shape == (1, 3, 9 * scale, 11 * scale)
    assert all(f.shape == (1, 64, 9, 11) for f in feats.values())
    assert torch.equal(feats["T3"], feats["B6"])  # T1..T3 are blocks 2, 4, 6
    found = detect_arch(model.state_dict())
    assert found is not None and found[0].name == "imdn" and found[2] == scale


def test_official_checkpoint_loads_with_or_without_module_prefix(tmp_path):
    path = teacher_file(2)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)  # the official files are DataParallel dumps
    bare = tmp_path / "bare.pth"
    torch.save({k[len("module."):]: v for k, v in raw.items()}, bare)
    a, b = load_checkpoint(path), load_checkpoint(bare)
    assert a.spec.name == b.spec.name == "imdn" and a.scale == 2 and a.config == {"n_feats": 64, "blocks": 6}
    assert canonical_state_dict(raw).keys() == b.model.state_dict().keys()


def test_conformance_fixture_output():
    io = torch.load(shared_path("fixtures", "imdn_official_x2_io.pt"), weights_only=True)
    model = load_checkpoint(teacher_file(2)).model
    with torch.no_grad():
        out = model(io["input"])
    assert (out - io["output"]).abs().max().item() < 1e-5


def test_upscale_reproduces_the_official_png(tmp_path, run_cli):
    assert_upscale_reproduces_fixture(run_cli, tmp_path, "imdn_official_x2", teacher_file(2))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_psnr_matches_the_paper(scale, set5):
    from srkd_cli.evaluate import evaluate_folder
    from srkd_cli.inference import Upscaler

    lm = load_checkpoint(teacher_file(scale))
    record = evaluate_folder(Upscaler(lm.model, lm.spec, lm.config, "cpu", tile=None), "imdn", set5, scale)
    assert abs(record.psnr_y - PUBLISHED_SET5[scale]) <= 0.02


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_packaged_zoo_points_at_the_official_files(scale):
    entry = get_zoo().get(f"imdn-x{scale}")
    assert entry.arch == "imdn" and entry.scale == scale and entry.params == PARAMS[scale]
    (src,) = entry.sources
    assert src.kind == "url"
    assert src.url == f"https://github.com/Zheng222/IMDN/raw/master/checkpoints/IMDN_x{scale}.pth"
    path = Path("/nonexistent")
    try:
        path = teacher_file(scale)
    except pytest.skip.Exception:
        pass
    if path.is_file():
        assert src.sha256 == sha256_file(path)
