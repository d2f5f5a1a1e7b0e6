"""Bring your own model (issue 35, item 4): `srkd distill` from any teacher srkd can load, output KD
for pairs the table does not know, `--teacher-only` (no HR images), and teachers named by a Hub id."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DATA, SHARED
from srkd_cli.archs import build_model
from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.errors import ConfigError
from srkd_cli.training.recipes import OUTPUT_KD_WEIGHT, make_distill_recipe

sys.path.insert(0, str(Path(__file__).parent))
from test_zoo import env, hub, payload, sha  # noqa: E402,F401  (the stand-in Hub and its environment)

HR = DATA / "Set5" / "HR"


def compact_fixture() -> Path:
    """Real-ESRGAN Compact x4 made with BasicSR's reference code (../shared/fixtures/README.md)."""
    for p in (DATA / "fixtures" / "compact_official_x4.pth", SHARED / "fixtures" / "compact_official_x4.pth"):
        if p.is_file():
            return p
    pytest.skip("compact_official_x4.pth is in neither tests/data/fixtures nor ../shared/fixtures")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three small 'photos' (56x56: smaller than an x4 HR patch of 16, so useless as HR) and one held-out image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for f in ("baby.png", "bird.png", "butterfly.png"):
        Image.open(HR / f).convert("RGB").resize((56, 56), Image.BICUBIC).save(root / "train" / f)
    Image.open(HR / "woman.png").convert("RGB").crop((40, 60, 104, 124)).save(root / "val" / "woman.png")
    return root


def _vals(run: Path) -> list:
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if '"val"' in l]


def test_teacher_only_distils_repsr_from_the_compact_fixture(photos, tmp_path, run_cli):
    """`srkd distill --teacher compact.pth --student repsr --scale 4 --teacher-only`: the photos are the inputs,
    the teacher's output the target, and the student's PSNR against the teacher's output on a held-out image rises."""
    teacher = compact_fixture()
    common = ["--teacher", teacher, "--student", "repsr", "--scale", "4", "--data", photos / "train",
              "--val", photos / "val", "--batch", "4", "--patch", "16", "--device", "cpu", "--threads", "1", "--quiet"]
    code, _, err = run_cli("distill", *common, "--steps", "60", "--val-every", "15", "--log-every", "15",
                           "--warmup", "0", "--out", tmp_path / "run", "--teacher-only")
    assert code == 0, err
    psnrs = [v["psnr_y"] for v in _vals(tmp_path / "run")]
    assert len(psnrs) == 4 and all(b > a for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert psnrs[-1] > psnrs[0] + 3, psnrs  # measured 44.0 -> 55.7 dB
    lm = load_checkpoint(tmp_path / "run" / "final.safetensors")
    prov = json.loads(lm.metadata["provenance"])
    # srkd knows both sides: paper 1's pairs at the thirds of both trunks, with the teacher's output as the pixel target
    assert prov["recipe"] == "paper1-feature-kd" and prov["pairs"] == [["S1", "T1"], ["S2", "T2"], ["S3", "T3"]]
    assert prov["teacher_only"] is True and lm.spec.name == "repsr"

    # without --teacher-only the same photos are HR images, too small for an x4 patch of 16: one line, exit 2
    code, _, err = run_cli("distill", *common, "--steps", "2", "--out", tmp_path / "hr")
    assert code == 2 and "no image is at least 64x64" in err and len(err.strip().splitlines()) == 1

    # no cache, the teacher per patch with its receptive radius (Compact: 6 LR pixels) also runs
    code, _, err = run_cli("distill", *common, "--steps", "2", "--out", tmp_path / "halo", "--teacher-only",
                           "--teacher-cache", "halo:4")
    assert code == 0, err


def test_teacher_only_targets_are_the_teachers_output_on_the_image_itself(photos, tmp_path):
    """The cache under --teacher-only runs the teacher on the image as it is (not downscaled), and the
    crops it hands out are the live teacher's answer on the same patch, away from the patch border."""
    from srkd_cli.training.data import PatchSampler, load_hr_store
    from srkd_cli.training.teacher_cache import TeacherCache

    teacher = load_checkpoint(compact_fixture()).model.eval()
    store = load_hr_store([photos / "train"], min_size=16)
    sampler = PatchSampler(store, 1, 16, 4, seed=0)
    lr, same = sampler.next()
    assert torch.equal(lr, same)
    cache = TeacherCache(teacher, store, 4, 16, (), True, "ram", input_scale=1, dtype="fp32")
    assert cache.lr_image(0, 0).shape[-2:] == (56, 56)
    out, _ = cache.targets(sampler.last_params)
    with torch.no_grad():
        live = teacher(lr)
    r = 6 * 4  # Compact's receptive radius (convs + 2), in output pixels
    assert torch.allclose(out[..., r:-r, r:-r], live[..., r:-r, r:-r], atol=1e-5)


def test_a_pair_the_table_does_not_know_falls_back_to_output_kd():
    torch.manual_seed(0)
    student = build_model("repsr", 4)
    carn = build_model("carn-m", 4)
    recipe = make_distill_recipe("repsr", student, "carn-m", carn)  # --out-weight not given
    d = recipe.describe()
    assert d["recipe"] == "output-kd" and d["pairs"] == [] and d["out_weight"] == OUTPUT_KD_WEIGHT
    swin = build_model("swinir", 4, blocks=1, embed_dim=12, depth=1, num_heads=2, window_size=4)
    assert make_distill_recipe("repsr", student, "swinir", swin).name == "output-kd"
    with pytest.raises(ConfigError, match="--out-weight 0.0: a repsr student shares no feature"):
        make_distill_recipe("repsr", student, "carn-m", carn, out_weight=0.0)
    # with --teacher-only the output is the target anyway
    only = make_distill_recipe("repsr", student, "carn-m", carn, out_weight=0.0, teacher_only=True)
    assert only.needs_teacher_output and only.describe()["teacher_only"]


def test_esrgan_and_compact_teachers_lend_features_where_both_sides_are_known():
    """Feature KD only where srkd knows both sides: T1..T3 at the input size (Compact, ESRGAN without
    pixel-unshuffle) meet RepSR's and SqueezeSR's S1..S3; the output term is on by default for them."""
    compact = build_model("compact", 4, n_feats=8, convs=4)
    esrgan = build_model("esrgan", 4, n_feats=8, blocks=3, growth=4)
    for student in ("repsr", "squeezesr"):
        for arch, teacher in (("compact", compact), ("esrgan", esrgan)):
            d = make_distill_recipe(student, build_model(student, 4), arch, teacher).describe()
            assert d["recipe"] == "paper1-feature-kd" and d["out_weight"] == 1.0
            assert d["pairs"] == [("S1", "T1"), ("S2", "T2"), ("S3", "T3")]
    # an x2 ESRGAN works unshuffled (features at half the input size): its output alone
    x2 = build_model("esrgan", 2, n_feats=8, blocks=3, growth=4, unshuffle=2)
    assert make_distill_recipe("repsr", build_model("repsr", 2), "esrgan", x2).name == "output-kd"
    # a known pair keeps its own default: paper 1's pairs with BSRN, output weight 0 unless given
    bsrn = build_model("bsrn", 4, n_feats=16, blocks=3)
    known = make_distill_recipe("repsr", build_model("repsr", 4), "bsrn", bsrn).describe()
    assert known["recipe"] == "paper1-feature-kd" and known["pairs"] and known["out_weight"] == 0.0


# ----------------------------------------------------------------------------- teachers named by a Hub id

def test_distill_from_a_teacher_named_by_a_pinned_hub_id(env, hub, photos, tmp_path, run_cli):  # noqa: F811
    data = compact_fixture().read_bytes()
    commit = hub.add_repo("someone/upscalers", {"4x-compact.pth": data})
    hub_id = f"hf://someone/upscalers/4x-compact.pth@{commit}"
    common = ["--student", "repsr", "--scale", "4", "--data", photos / "train", "--steps", "2", "--batch", "2",
              "--patch", "16", "--device", "cpu", "--threads", "1", "--quiet", "--teacher-only"]
    code, _, err = run_cli("distill", "--teacher", hub_id, *common, "--out", tmp_path / "a")
    assert code == 0, err
    assert hub.requests("GET", hub.resolve_path("someone/upscalers", "4x-compact.pth", commit))
    prov = json.loads(load_checkpoint(tmp_path / "a" / "final.safetensors").metadata["provenance"])
    assert prov["teacher"] == hub_id and prov["teacher_sha256"] == sha(data)

    # pinned by its sha256 instead of a commit; served from huggingface_hub's cache with the server gone
    hub.stop()
    code, _, err = run_cli("distill", "--teacher", f"hf://someone/upscalers/4x-compact.pth@{commit}#sha256={sha(data)}",
                           *common, "--out", tmp_path / "b")
    assert code == 0, err


@pytest.mark.parametrize("hub_id,words", [
    ("hf://someone/upscalers/4x-compact.pth", "pin the file (no commit or sha256 is given)"),
    ("hf://someone/upscalers/4x-compact.pth@main", "@main is a branch or tag"),
    ("hf://someone/4x.pth@" + "a" * 40, "a Hub id is hf://OWNER/REPO/FILE@COMMIT"),
    ("hf://someone/upscalers/4x.pth#sha256=xyz", "sha256= and the file's 64 hexadecimal digits"),
])
def test_an_unpinned_or_malformed_hub_id_is_one_line(hub_id, words, tmp_path, run_cli):
    code, _, err = run_cli("distill", "--teacher", hub_id, "--student", "repsr", "--scale", "4", "--data", HR,
                           "--out", tmp_path / "r", "--device", "cpu", "--teacher-only")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_a_hub_file_that_fails_its_sha256_is_refused_and_deleted(env, hub, tmp_path, run_cli):  # noqa: F811
    data = compact_fixture().read_bytes()
    hub.add_repo("someone/upscalers", {"4x-compact.pth": data})
    wrong = "0" * 64
    code, _, err = run_cli("distill", "--teacher", f"hf://someone/upscalers/4x-compact.pth#sha256={wrong}",
                           "--student", "repsr", "--scale", "4", "--data", HR, "--out", tmp_path / "r", "--device", "cpu")
    assert code != 0 and "fails its checksum" in err and len(err.strip().splitlines()) == 1, err
    assert not list((env / "hf" / "hub").rglob("4x-compact.pth"))


def test_teacher_only_validates_held_out_photos_against_the_teacher(photos, tmp_path, run_cli):
    """--val-split under --teacher-only: the held-out photos are inputs, the teacher's output the reference."""
    code, _, err = run_cli("distill", "--teacher", compact_fixture(), "--student", "repsr", "--scale", "4",
                           "--data", photos / "train", "--val-split", "1", "--steps", "3", "--batch", "2", "--patch", "16",
                           "--device", "cpu", "--threads", "1", "--quiet", "--teacher-only", "--out", tmp_path / "r")
    assert code == 0, err
    [val] = _vals(tmp_path / "r")
    assert list(val["sets"]) == ["held-out"] and 20 < val["psnr_y"] < 99


def test_the_fill_runs_in_bf16_where_it_measured_faster(tmp_path):
    from srkd_cli.runtime.cpu import cpu_bf16_units
    from srkd_cli.training.data import PatchSampler, load_hr_store
    from srkd_cli.training.teacher_cache import TeacherCache, fill_precision

    cpu = torch.device("cpu")
    compact = load_checkpoint(compact_fixture()).model.eval()
    bsrn = build_model("bsrn", 2, n_feats=16, blocks=3).eval()
    assert fill_precision("fp32", cpu, compact) == "fp32" and fill_precision("bf16", cpu, bsrn) == "bf16"
    assert fill_precision("auto", cpu, bsrn) == "fp32"  # measured slower in bf16
    assert fill_precision("auto", cpu, compact) == ("bf16" if cpu_bf16_units() else "fp32")
    edsr_t = build_model("edsr-t", 2, n_feats=8, blocks=1, modules_per_block=1).eval()  # measured: 1.3x, -0.007 dB
    assert fill_precision("auto", cpu, edsr_t) == ("bf16" if cpu_bf16_units() else "fp32")
    store = load_hr_store([HR], min_size=64)
    sampler = PatchSampler(store, 4, 16, 2, seed=0)
    sampler.next()
    half = TeacherCache(compact, store, 4, 16, (), True, str(tmp_path), precision="bf16")
    full = TeacherCache(compact, store, 4, 16, (), True, str(tmp_path), precision="fp32")
    assert half.folder != full.folder and "filled in bf16" in half.describe()
    a, b = half.targets(sampler.last_params)[0].float(), full.targets(sampler.last_params)[0].float()
    assert (a - b).abs().mean() < 1e-3 and not torch.equal(a, b)


def test_upscale_takes_a_pinned_hub_id_too(env, hub, photos, tmp_path, run_cli):  # noqa: F811
    data = compact_fixture().read_bytes()
    commit = hub.add_repo("someone/upscalers", {"4x-compact.pth": data})
    out = tmp_path / "up.png"
    code, _, err = run_cli("upscale", photos / "val" / "woman.png", "-o", out, "--model",
                           f"hf://someone/upscalers/4x-compact.pth@{commit}", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert Image.open(out).size == (256, 256)


def test_esrgan_fixture_teacher_only_and_a_resume_that_must_match(photos, tmp_path, run_cli):
    """The ESRGAN conformance fixture (2 RRDBs, so no T1..T3: output KD) as a teacher, cached in uint8;
    a --resume without --teacher-only is refused with one line."""
    teacher = DATA / "fixtures" / "esrgan_official_x4.pth"
    if not teacher.is_file():
        teacher = SHARED / "fixtures" / "esrgan_official_x4.pth"
    if not teacher.is_file():
        pytest.skip("esrgan_official_x4.pth is not there")
    data = tmp_path / "photos"  # 72x72: big enough for an x4 HR patch of 16 too, so the resume gets to its check
    data.mkdir()
    for f in ("bird.png", "head.png"):
        Image.open(HR / f).convert("RGB").crop((0, 0, 72, 72)).save(data / f)
    common = ["--teacher", teacher, "--student", "repsr", "--scale", "4", "--data", data, "--batch", "2",
              "--patch", "16", "--device", "cpu", "--threads", "1", "--quiet", "--out", tmp_path / "r"]
    code, _, err = run_cli("distill", *common, "--steps", "2", "--teacher-only", "--teacher-cache", "ram",
                           "--cache-dtype", "uint8")
    assert code == 0, err
    prov = json.loads(load_checkpoint(tmp_path / "r" / "final.safetensors").metadata["provenance"])
    assert (prov["recipe"], prov["cache_dtype"], prov["teacher_only"]) == ("output-kd", "uint8", True)
    code, _, err = run_cli("distill", *common, "--steps", "4", "--resume")
    assert code == 2 and "was trained with --teacher-only" in err and len(err.strip().splitlines()) == 1, err
