"""Data upcycling (training/upcycle.py): the teacher's zoom of each training image's centre."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from srkd_cli.loader import load_model
from srkd_cli.training.data import load_hr_store
from srkd_cli.training.upcycle import centre_window, upcycle_folder


@pytest.mark.parametrize("h, w, s, rim", [(100, 90, 2, 12), (99, 61, 3, 12), (40, 44, 4, 30)])
def test_centre_window_is_the_centre_with_a_clamped_rim(h, w, s, rim):
    (t, l, wh, ww), (y, x, ch, cw) = centre_window(h, w, s, rim)
    assert (ch, cw) == (h // s, w // s)
    top, left = t + y, l + x  # the centre in image coordinates
    assert abs(top - (h - ch - top)) <= 1 and abs(left - (w - cw - left)) <= 1
    assert t >= 0 and l >= 0 and t + wh <= h and l + ww <= w
    assert y == min(rim, top) and x == min(rim, left)
    assert wh - y - ch == min(rim, h - top - ch) and ww - x - cw == min(rim, w - left - cw)


@pytest.fixture(scope="module")
def teacher():
    return load_model("squeezesr-x2", device="cpu").model.eval()


def _images(folder, rng):
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (70, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (52, 80), dtype=np.uint8)).save(folder / "sub" / "b.webp", lossless=True)


def test_upcycled_images_are_the_teachers_upscale_of_the_centre(tmp_path, teacher):
    src, dest = tmp_path / "train", tmp_path / "up"
    _images(src, np.random.default_rng(0))
    made = upcycle_folder(teacher, 2, src, dest, rim=12, provenance={"teacher": "squeezesr-x2"})
    assert made == 2
    a = np.asarray(Image.open(dest / "a.png"))
    b = np.asarray(Image.open(dest / "sub" / "b.png"))
    assert a.shape == (70 // 2 * 2, 64 // 2 * 2, 3) and b.shape == (52 // 2 * 2, 80 // 2 * 2, 3)
    # With a rim wider than the model's reach, the centre is upscaled as it is inside the whole image.
    img = np.array(Image.open(src / "a.png"))
    with torch.no_grad():
        whole = teacher(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).clamp(0, 1)[0]
    whole = (whole.permute(1, 2, 0).numpy() * 255).round()
    (t, l, _, _), (y, x, ch, cw) = centre_window(70, 64, 2, 12)
    ref = whole[(t + y) * 2 : (t + y + ch) * 2, (l + x) * 2 : (l + x + cw) * 2]
    assert np.abs(a.astype(float) - ref).max() <= 1
    assert b.ndim == 3  # a gray source is read as RGB, as the trainer reads it
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["teacher"] == "squeezesr-x2" and prov["scale"] == 2 and prov["rim"] == 12
    # The folder is training data as it stands.
    store = load_hr_store([src, dest])
    assert len(store) == 4 and (70, 64) in store.sizes and (70, 64) == a.shape[:2]


def test_upcycling_resumes_and_splits_across_processes(tmp_path, teacher):
    src = tmp_path / "train"
    _images(src, np.random.default_rng(1))
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert upcycle_folder(teacher, 2, src, whole) == 2
    stamp = (whole / "a.png").stat().st_mtime_ns
    assert upcycle_folder(teacher, 2, src, whole) == 0  # a rerun keeps what is there
    assert (whole / "a.png").stat().st_mtime_ns == stamp
    assert upcycle_folder(teacher, 2, src, split, part=(0, 2)) == 1
    assert upcycle_folder(teacher, 2, src, split, part=(1, 2)) == 1
    for name in ("a.png", "sub/b.png"):
        assert (whole / name).read_bytes() == (split / name).read_bytes()
