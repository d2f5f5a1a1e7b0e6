"""The teacher cache: cropped where the sampler cut the patch, equal to the live teacher away
from the patch border, bounded in memory, reused from a folder, and wired into `srkd distill`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from conftest import DATA, shared_path
from srkd_cli.archs import build_model, get_arch
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.errors import ConfigError
from srkd_cli.training import TrainConfig, train
from srkd_cli.training import teacher_cache as tc
from srkd_cli.training.data import PatchSampler, load_hr_store
from srkd_cli.training.losses import feature_kd_loss, pixel_loss
from srkd_cli.training.teacher_cache import CODES, TeacherCache, lr_corner

HR = DATA / "Set5" / "HR"
PATCH = 24


def local_teacher(scale: int) -> torch.nn.Module:
    """A small EDSR-T: convolutions only, so its answer at a pixel depends on a bounded neighbourhood."""
    torch.manual_seed(scale)
    return build_model("edsr-t", scale, n_feats=8, blocks=3, modules_per_block=1).eval()


# Receptive radius (LR pixels) of the local teacher's T3 and output: head 1, 2 per module, tail 1-2.
RADIUS = 10


@pytest.fixture(scope="module")
def store():
    return load_hr_store([HR], min_size=PATCH * 4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cached_lr_image_holds_the_samplers_patch_for_every_augmentation(store, scale):
    sampler = PatchSampler(store, scale, PATCH, 16, seed=scale)
    cache = TeacherCache(local_teacher(scale), store, scale, PATCH, ("T1",), False, "ram")
    codes = set()
    for _ in range(6):
        lr, _ = sampler.next()
        for b, row in enumerate(sampler.last_params):
            index, code, y, x = lr_corner(row, scale, PATCH)
            codes.add(code)
            full = cache.lr_image(index, code)[0]
            assert torch.equal(full[:, y : y + PATCH, x : x + PATCH], lr[b])
    assert codes == set(range(CODES))


@pytest.mark.parametrize("scale", [2, 4])
def test_cached_targets_equal_the_live_teacher_away_from_the_patch_border(store, scale):
    teacher = local_teacher(scale)
    names = ("T1", "T2", "T3")
    sampler = PatchSampler(store, scale, PATCH, 8, seed=7)
    cache = TeacherCache(teacher, store, scale, PATCH, names, True, "ram")
    lr, hr = sampler.next()
    out, feats = cache.targets(sampler.last_params)
    with torch.no_grad():
        live_out, live_feats = teacher.forward_with_features(lr, names)
    r, rs = RADIUS, RADIUS * scale
    inner = (..., slice(r, -r), slice(r, -r))
    inner_hr = (..., slice(rs, -rs), slice(rs, -rs))
    for k in names:
        assert feats[k].dtype == torch.float16 and feats[k].shape == live_feats[k].shape
        # float16 storage: relative precision 2^-11
        assert torch.allclose(feats[k][inner].float(), live_feats[k][inner], atol=2e-3, rtol=2e-3)
    assert torch.allclose(out[inner_hr].float(), live_out[inner_hr], atol=2e-3, rtol=2e-3)
    # ... and at the border the live teacher saw zero padding where the cache saw the image
    assert (out.float() - live_out).abs().max() > 1e-3

    # the loss on the interior is the same, whichever way the targets came
    student = build_model("squeezesr", scale, n_feats=8, squeeze=4, expand1x1=4)
    s_out, s_feats = student.forward_with_features(lr, ("S1", "S2", "S3"))
    pairs = list(zip(("S1", "S2", "S3"), names))
    crop = {k: v[inner] for k, v in s_feats.items()}
    cached_loss = feature_kd_loss(crop, {k: v[inner].float() for k, v in feats.items()}, pairs) + pixel_loss(
        s_out[inner_hr], out[inner_hr].float())
    live_loss = feature_kd_loss(crop, {k: v[inner] for k, v in live_feats.items()}, pairs) + pixel_loss(
        s_out[inner_hr], live_out[inner_hr])
    assert cached_loss.item() == pytest.approx(live_loss.item(), rel=1e-3)


def test_imdn_cached_output_is_the_whole_image_answer(store):
    """IMDN pools channel statistics over its whole input, so no pixel is purely local: the cache
    keeps the teacher's whole-image answer, within a fraction of a grey level of the live one."""
    teacher = load_checkpoint(shared_path("teachers", "IMDN_x2.pth")).model
    sampler = PatchSampler(store, 2, 32, 4, seed=1)
    cache = TeacherCache(teacher, store, 2, 32, (), True, "ram")
    lr, hr = sampler.next()
    out, feats = cache.targets(sampler.last_params)
    assert feats == {}
    with torch.no_grad():
        live = teacher(lr)
    assert (out.float() - live).abs().mean().item() < 2e-3  # half a grey level
    assert pixel_loss(out, hr).item() <= pixel_loss(live, hr).item() * 1.05


def test_bsrn_cached_targets_are_the_whole_image_answer_and_distill_uses_them(store, tmp_path):
    """BSRN's CCA pools over its whole input and its ESA max-pools a map at 1/6 size and interpolates
    it back, so, like IMDN, no pixel is purely local: the cache keeps the whole-image answer, close
    to the live one and no farther from HR; `srkd distill --teacher-cache ram` runs with it."""
    path = shared_path("teachers", "net_g_BSRN_x2.pth")
    teacher = load_checkpoint(path).model
    names = ("T1", "T2", "T3")
    sampler = PatchSampler(store, 2, 32, 2, seed=1)  # two patches: two whole-image teacher runs
    cache = TeacherCache(teacher, store, 2, 32, names, True, "ram")
    assert cache.channels == {k: 64 for k in names}
    lr, hr = sampler.next()
    out, feats = cache.targets(sampler.last_params)
    with torch.no_grad():
        live, live_feats = teacher.forward_with_features(lr, names)
    assert all(feats[k].shape == live_feats[k].shape for k in names)
    assert (out.float() - live).abs().mean().item() < 2e-3  # half a grey level
    assert pixel_loss(out, hr).item() <= pixel_loss(live, hr).item() * 1.05

    # The run fills the cache first (8 entries per image): one small crop of a Set5 image keeps it quick.
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.open(HR / "butterfly.png").crop((64, 64, 144, 144)).save(tiny / "crop.png")
    run = train(TrainConfig(arch="squeezesr", scale=2, data=[tiny], out=tmp_path / "bsrn", teacher=str(path), steps=2,
                            batch=2, patch=16, val_every=0, ckpt_every=0, device="cpu", quiet=True, seed=1,
                            out_weight=0.5, teacher_cache="ram"))
    prov = json.loads(load_checkpoint(run.final).metadata["provenance"])
    assert prov["teacher_cache"] == "ram" and prov["pairs"] == [["S1", "T1"], ["S2", "T2"], ["S3", "T3"]]


def test_folder_cache_is_written_once_and_reused(store, tmp_path):
    teacher = local_teacher(2)
    sampler = PatchSampler(store, 2, PATCH, 8, seed=3)
    sampler.next()
    params = sampler.last_params
    first = TeacherCache(teacher, store, 2, PATCH, ("T1", "T3"), True, str(tmp_path))
    first.fill()
    assert first.made == len(store) * CODES
    files = sorted(p.name for p in first.folder.iterdir())
    assert len(files) == len(store) * CODES * 3 and not any(f.endswith(".tmp") for f in files)
    again = TeacherCache(teacher, store, 2, PATCH, ("T1", "T3"), True, str(tmp_path))
    again.fill()
    assert again.made == 0 and again.folder == first.folder
    ram = TeacherCache(teacher, store, 2, PATCH, ("T1", "T3"), True, "ram")
    (a_out, a_feats), (b_out, b_feats) = again.targets(params), ram.targets(params)
    assert torch.equal(a_out, b_out) and all(torch.equal(a_feats[k], b_feats[k]) for k in a_feats)
    # other weights are another cache
    torch.manual_seed(99)
    other_weights = build_model("edsr-t", 2, n_feats=8, blocks=3, modules_per_block=1).eval()
    other = TeacherCache(other_weights, store, 2, PATCH, ("T1",), False, str(tmp_path))
    assert other.folder != first.folder


def test_memory_cache_refuses_what_it_cannot_hold(store, monkeypatch):
    monkeypatch.setattr(tc, "RAM_SHARE", 1e-9)
    with pytest.raises(ConfigError, match=r"--teacher-cache ram: the full cache takes .* GiB"):
        TeacherCache(local_teacher(2), store, 2, PATCH, ("T1",), True, "ram")


def test_size_is_stated_per_lr_pixel(store):
    cache = TeacherCache(local_teacher(4), store, 4, PATCH, ("T1", "T2"), True, "ram")
    assert cache.bytes_per_lr_pixel == 2 * (8 + 8 + 3 * 16)
    lr_pixels = sum(h // 4 * (w // 4) for h, w in store.sizes)
    assert cache.total_bytes == lr_pixels * CODES * cache.bytes_per_lr_pixel
    assert "GiB when full" in cache.describe()


def _teacher_file(tmp_path, **cfg):
    torch.manual_seed(0)
    model = build_model("edsr-t", 2, **cfg)
    return save_checkpoint(tmp_path / "teacher.safetensors", model, "edsr-t", get_arch("edsr-t").config(**cfg))


def _distill(tmp_path, name, teacher, **kw):
    cfg = TrainConfig(arch="squeezesr", scale=2, data=[HR], out=tmp_path / name, teacher=str(teacher), steps=6,
                      batch=4, patch=16, log_every=1, val_every=0, ckpt_every=0, device="cpu", quiet=True, seed=1, **kw)
    return train(cfg)


def _log(run) -> list:
    return [json.loads(l) for l in (run.run_dir / "log.jsonl").read_text().splitlines() if '"train"' in l]


def test_distill_with_the_cache_trains_like_the_live_teacher(tmp_path):
    teacher = _teacher_file(tmp_path, n_feats=8, blocks=3, modules_per_block=1)
    live = _distill(tmp_path, "live", teacher, out_weight=0.5)
    cached = _distill(tmp_path, "cached", teacher, out_weight=0.5, teacher_cache="ram")
    a, b = _log(live), _log(cached)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert a[0]["l1"] == pytest.approx(b[0]["l1"], rel=1e-6)  # the same patches and student
    # the targets differ only by the teacher's border effects: close, not equal
    assert b[0]["feat"] == pytest.approx(a[0]["feat"], rel=0.25) and b[0]["feat"] != a[0]["feat"]
    prov = json.loads(load_checkpoint(cached.final).metadata["provenance"])
    assert prov["teacher_cache"] == "ram" and prov["out_weight"] == 0.5


def test_cache_without_a_teacher_is_a_clear_error(tmp_path):
    cfg = TrainConfig(arch="squeezesr", scale=2, data=[HR], out=tmp_path / "r", steps=1, teacher_cache="ram",
                      device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="--teacher-cache needs a teacher"):
        train(cfg)


def test_a_narrower_student_learns_through_an_adapter_that_export_drops(tmp_path):
    """A 16-wide EDSR-T teacher and an 8-wide SqueezeSR: 1x1 adapters map S_i to T_i's width."""
    teacher = _teacher_file(tmp_path, n_feats=16, blocks=3, modules_per_block=1)
    run = _distill(tmp_path, "adapted", teacher, arch_config={"n_feats": 8, "squeeze": 4, "expand1x1": 4}, teacher_cache="ram")
    lm = load_checkpoint(run.final)
    assert lm.config["n_feats"] == 8
    assert not any("adapter" in k for k in lm.model.state_dict())
    state = torch.load(run.run_dir / "state.pt", weights_only=True)
    assert sorted({k.split(".")[0] for k in state["adapters"]}) == ["S1", "S2", "S3"]
    assert state["adapters"]["S1.weight"].shape == (16, 8, 1, 1)
    prov = json.loads(lm.metadata["provenance"])
    assert prov["adapters"] == ["S1", "S2", "S3"]
    # resume restores the adapters with the rest of the state
    resumed = train(TrainConfig(arch="squeezesr", scale=2, data=[HR], out=run.run_dir, teacher=str(teacher), steps=8,
                                batch=4, patch=16, log_every=1, val_every=0, ckpt_every=0, device="cpu", quiet=True,
                                seed=1, arch_config={"n_feats": 8, "squeeze": 4, "expand1x1": 4}, teacher_cache="ram", resume=True))
    assert resumed.step == 8


# ----------------------------------------------------------------------------- at user scale (issues 33, 35)

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype,size", [("fp16", 2), ("uint8", 1), ("fp32", 4)])
def test_cache_dtypes_store_targets_compactly(store, dtype, size):
    """fp16 and uint8 keep the teacher's image within half a grey level of fp32 (uint8: the 8-bit image), and
    its features within half a step of 256 per channel, in half and a quarter of the bytes."""
    teacher = local_teacher(2)
    cache = TeacherCache(teacher, store, 2, PATCH, ("T1",), True, "ram", dtype=dtype)
    assert cache.bytes_per_lr_pixel == size * (8 + 3 * 4)
    sampler = PatchSampler(store, 2, PATCH, 4, seed=5)
    sampler.next()
    out, feats = cache.targets(sampler.last_params)
    exact = TeacherCache(teacher, store, 2, PATCH, ("T1",), True, "ram", dtype="fp32")
    e_out, e_feats = exact.targets(sampler.last_params)
    assert out.shape == e_out.shape and feats["T1"].shape == e_feats["T1"].shape
    if dtype == "uint8":
        assert (out - e_out.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
        span = max(float(v["T1"].float().amax() - v["T1"].float().amin()) for v in cache._entries.values())
        assert (feats["T1"].float() - e_feats["T1"]).abs().max() <= span / 510 + 1e-5
    else:
        tol = 1e-6 if dtype == "fp32" else 2e-3
        assert torch.allclose(out.float(), e_out, atol=tol) and torch.allclose(feats["T1"].float(), e_feats["T1"], atol=tol, rtol=tol)


def test_uint8_folder_cache_reads_back_what_it_stored(store, tmp_path):
    teacher = local_teacher(2)
    sampler = PatchSampler(store, 2, PATCH, 4, seed=6)
    sampler.next()
    folder = TeacherCache(teacher, store, 2, PATCH, ("T1", "T2"), True, str(tmp_path), dtype="uint8")
    ram = TeacherCache(teacher, store, 2, PATCH, ("T1", "T2"), True, "ram", dtype="uint8")
    (a, af), (b, bf) = folder.targets(sampler.last_params), ram.targets(sampler.last_params)
    assert torch.equal(a, b) and all(torch.equal(af[k], bf[k]) for k in af)
    folders = {TeacherCache(teacher, store, 2, PATCH, ("T1",), True, str(tmp_path), dtype=d).folder for d in tc.DTYPES}
    assert len(folders) == 3 and folder.folder in folders  # each storage is a folder of its own


def test_halo_mode_gives_the_whole_image_answer_for_a_local_teacher(store):
    """`--teacher-cache halo`: the teacher sees the patch widened by its receptive radius, so for a
    purely local teacher the targets equal the whole-image answer the cache stores."""
    teacher = local_teacher(2)
    wide = PatchSampler(store, 2, PATCH + 2 * RADIUS, 4, seed=2)
    halo = tc.HaloTeacher(teacher, wide, 2, 2, PATCH, RADIUS, ("T1", "T3"), True)
    lr, hr = halo.next()
    assert lr.shape[-1] == PATCH and hr.shape[-1] == PATCH * 2
    out, feats = halo.targets(halo.last_params)
    whole = TeacherCache(teacher, store, 2, PATCH + 2 * RADIUS, ("T1", "T3"), True, "ram", dtype="fp32")
    w_out, w_feats = whole.targets(halo.last_params)
    r, rs = RADIUS, RADIUS * 2
    assert torch.allclose(out, w_out[..., rs:-rs, rs:-rs], atol=1e-5)
    assert torch.allclose(feats["T3"], w_feats["T3"][..., r:-r, r:-r], atol=1e-5)
    assert tc.parse_mode("halo:7") == "halo:7" and tc.halo_margin("halo:7", teacher) == 7
    with pytest.raises(ConfigError, match="halo:R"):
        tc.parse_mode("halo:x")


def _srkd(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "srkd_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **kw)


def _tiny_teacher_file(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = dict(n_feats=8, blocks=3, modules_per_block=1)
    return save_checkpoint(tmp_path / "tiny-teacher.safetensors", build_model("edsr-t", 2, **cfg), "edsr-t",
                           get_arch("edsr-t").config(**cfg))


def test_a_damaged_cache_entry_is_named_rebuilt_and_the_run_goes_on(tmp_path):
    """Issue 33 item 10: a pickle where an array was, a truncated file and an empty one; a real `srkd distill`."""
    teacher = _tiny_teacher_file(tmp_path)
    cache_dir = tmp_path / "cache"
    args = ["distill", "--teacher", teacher, "--student", "squeezesr", "--scale", "2", "--data", HR, "--steps", "2",
            "--batch", "2", "--patch", "16", "--device", "cpu", "--threads", "1", "--teacher-cache", cache_dir,
            "--out-weight", "0.5"]
    first = _srkd(*args, "--out", tmp_path / "a")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    [folder] = cache_dir.iterdir()
    files = sorted(folder.glob("*.npy"))
    assert len(files) == 5 * CODES * 4  # T1..T3 and the output
    pickled, truncated, empty = files[3], files[17], files[40]
    np.save(pickled, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    again = _srkd(*args, "--out", tmp_path / "b")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "internal error" not in err and "Traceback" not in err
    for f in (pickled, truncated, empty):
        assert f"{f} is damaged" in err.replace("\n", "")  # named, one warning each
        np.load(f, mmap_mode="r")  # rebuilt: readable again
    assert "3 computed" in err or "(3 computed)" in err
    assert (tmp_path / "b" / "final.safetensors").is_file()


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def _slow_fill_args(tmp_path, cache_dir):
    """BSRN x2 (bundled) on Set5: 40 entries of a real teacher, about a second each on one thread."""
    return ["distill", "--teacher", "bsrn-x2", "--student", "repsr", "--scale", "2", "--data", HR, "--steps", "5",
            "--batch", "2", "--patch", "16", "--device", "cpu", "--threads", "1", "--teacher-cache", cache_dir,
            "--out", tmp_path / "run"]


def test_sigterm_during_the_cache_fill_stops_promptly_and_cleanly(tmp_path):
    """Issue 33 item 11: SIGTERM to a real `srkd distill` filling its cache: it stops within an entry, exits 130,
    leaves no temporary file and no training state; the entries made are kept and the next run reuses them."""
    cache_dir = tmp_path / "cache"
    proc = _srkd(*_slow_fill_args(tmp_path, cache_dir))
    _wait_for(lambda: len(list(cache_dir.glob("*/*.npy"))) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped while filling (terminated)" in err and "Traceback" not in err
    made = list(cache_dir.glob("*/*.npy"))
    assert 0 < len(made) < 5 * CODES * 4
    assert not list(cache_dir.glob("*/.*")) and not (tmp_path / "run" / "state.pt").exists()


def test_time_limit_stops_the_cache_fill_with_an_eta(tmp_path):
    cache_dir = tmp_path / "cache"
    proc = _srkd(*_slow_fill_args(tmp_path, cache_dir), "--time-limit", "4")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stopped while filling (time limit" in err
    assert re.search(r"teacher cache: \d+/40 entries \(\d+ computed\), \d+ s, about .* left", err), err
    done = [int(n) for n in re.findall(r"teacher cache: (\d+)/40 entries", err)]
    assert done and max(done) < 40  # it stopped before the fill was done
