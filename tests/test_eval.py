import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path

KEYS = {"model", "scale", "dataset", "n_images", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "seconds"}


def _eval_json(run_cli, tmp_path, *args):
    out = tmp_path / "r.json"  # one report file, rewritten by each call
    code, stdout, err = run_cli("eval", *args, "--json", out, "--overwrite")
    assert code == 0, err
    return json.loads(out.read_text()), stdout


@pytest.mark.parametrize("scale,published", [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_set5_matches_published(run_cli, tmp_path, set5, scale, published):
    (rec,), stdout = _eval_json(run_cli, tmp_path, "--model", "bicubic", "--data", set5, "--scale", scale)
    assert set(rec) == KEYS
    assert (rec["model"], rec["dataset"], rec["n_images"], rec["scale"]) == ("bicubic", "Set5", 5, scale)
    assert abs(rec["psnr_y"] - published) <= 0.02
    assert "PSNR-Y" in stdout and "Set5" in stdout


def test_bicubic_set14_matches_our_copy(run_cli, tmp_path):
    set14 = shared_path("data", "benchmark", "Set14")
    expected = {2: 30.33, 3: 27.63, 4: 26.09}
    for scale, value in expected.items():
        (rec,), _ = _eval_json(run_cli, tmp_path, "--model", "bicubic", "--data", set14, "--scale", scale)
        assert rec["n_images"] == 14
        assert abs(rec["psnr_y"] - value) <= 0.02, (scale, rec["psnr_y"])


def test_missing_lr_is_made_with_matlab_imresize(run_cli, tmp_path, set5):
    only_hr = tmp_path / "Set5hr"
    shutil.copytree(set5 / "HR", only_hr / "HR")
    (a,), _ = _eval_json(run_cli, tmp_path, "--model", "bicubic", "--data", set5, "--scale", 3)
    (b,), _ = _eval_json(run_cli, tmp_path, "--model", "bicubic", "--data", only_hr, "--scale", 3)
    assert a["psnr_y"] == pytest.approx(b["psnr_y"], abs=1e-9)  # imresize reproduces the MATLAB LR files exactly


def test_sr_folder_scores_like_the_model_that_made_it(run_cli, tmp_path, set5):
    saved = tmp_path / "saved"
    recs, _ = _eval_json(run_cli, tmp_path, "--model", "bicubic", "--data", set5, "--scale", 2, "--save-images", saved)
    sr_dir = saved / "Set5" / "bicubic"
    assert len(list(sr_dir.glob("*.png"))) == 5
    (rec,), _ = _eval_json(run_cli, tmp_path, "--sr", sr_dir, "--data", set5, "--scale", 2)
    assert rec["model"] == "sr:bicubic"
    assert rec["psnr_y"] == pytest.approx(recs[0]["psnr_y"], abs=1e-9)
    assert rec["ssim_rgb"] == pytest.approx(recs[0]["ssim_rgb"], abs=1e-9)


def test_weights_and_grayscale(run_cli, tmp_path, fixture_dir, set5):
    data = tmp_path / "Gray"
    (data / "HR").mkdir(parents=True)
    rgb = np.asarray(Image.open(set5 / "HR" / "baby.png"))[:64, :80]
    Image.fromarray(rgb).convert("L").save(data / "HR" / "g.png")
    Image.fromarray(rgb).save(data / "HR" / "c.png")
    recs, _ = _eval_json(
        run_cli, tmp_path, "--weights", fixture_dir / "swinir_official_2rstb_x2.pth", "--model", "bicubic",
        "--data", data, "--scale", 2, "--device", "cpu",
    )
    assert [r["model"] for r in recs] == ["bicubic", "swinir_official_2rstb_x2"]
    assert all(r["n_images"] == 2 for r in recs)
    assert recs[0]["psnr_y"] > recs[1]["psnr_y"]  # random weights lose to bicubic: the model really ran


def _dataset(tmp_path, name="D"):
    d = tmp_path / name
    (d / "HR").mkdir(parents=True)
    return d


def test_bad_input_gets_one_clear_line(run_cli, tmp_path, set5):
    empty = _dataset(tmp_path, "Empty")
    bad_lr = _dataset(tmp_path, "BadLR")
    shutil.copy(set5 / "HR" / "bird.png", bad_lr / "HR" / "bird.png")
    (bad_lr / "LR_bicubic" / "X2").mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(bad_lr / "LR_bicubic" / "X2" / "birdx2.png")
    not_img = _dataset(tmp_path, "NotImage")
    (not_img / "HR" / "x.png").write_text("not an image")
    cases = [
        (tmp_path / "nowhere", "no such folder"),
        (empty, "no images"),
        (bad_lr, "birdx2.png: is 10x10"),
        (not_img, "x.png: not an image srkd can read"),
    ]
    for folder, msg in cases:
        code, _, err = run_cli("eval", "--model", "bicubic", "--data", folder, "--scale", 2)
        assert code != 0
        assert msg in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("eval", "--data", set5, "--scale", 2)
    assert code != 0 and "name something to evaluate" in err
    code, _, err = run_cli("eval", "--model", "bicubic", "--data", set5, "--scale", 5)
    assert code != 0 and "--scale 5" in err
