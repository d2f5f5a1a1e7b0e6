"""Every model shipped inside the package scores on Set5 what weights.toml says it does."""

import pytest

from srkd_cli.evaluate import evaluate_folder, load_pairs
from srkd_cli.inference import Upscaler
from srkd_cli.loader import load_model
from srkd_cli.zoo import get_zoo

BUNDLED = [e for e in get_zoo().list() if get_zoo().where(e.name) == "bundled"]


def test_default_models_are_bundled():
    names = {e.name for e in BUNDLED}
    assert {"squeezesr-x2", "squeezesr-x3", "squeezesr-x4"} <= names


@pytest.mark.parametrize("entry", BUNDLED, ids=[e.name for e in BUNDLED])
def test_bundled_model_matches_its_recorded_set5_psnr(entry, set5):
    lm = load_model(entry.name, device="cpu")
    assert (lm.spec.name, lm.scale) == (entry.arch, entry.scale)
    assert sum(p.numel() for p in lm.model.parameters()) == entry.params
    rec = evaluate_folder(Upscaler(lm.model, lm.spec, lm.config, "cpu", tile=None), entry.name, set5, entry.scale,
                          pairs=load_pairs(set5, entry.scale))
    assert rec.psnr_y == pytest.approx(entry.metrics["set5_psnr_y"], abs=0.02)
