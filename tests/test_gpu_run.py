"""research/gpu/gpu_run.py: the plans' arithmetic (gpu_plan), the packs a session hands the next
(gpu_state), the one-line errors, and the --smoke runs end to end.

A smoke run is the GPU session in miniature on the CPU (tiny models, Set5 as training data),
stopped by --call-minutes part-way and finished with --resume, as a device call's limit would;
paper 2's is resumed on a "fresh machine" (an empty --work and only what a session carries),
and one of its students is bundled into a zoo and run by `srkd upscale --model`; that run is made
once (a module fixture) and read by each test that checks it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import shutil
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from srkd_cli import zoo as zoo_mod
from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.errors import ConfigError
from srkd_cli.training import TrainConfig, train
from srkd_cli.zoo import Zoo
from srkd_cli.zoo.naming import check_bundle_name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "research" / "gpu" / "gpu_run.py"
sys.path.insert(0, str(SCRIPT.parent))  # the harness's own modules, outside the installed package
import gpu_plan as gp  # noqa: E402
import gpu_state as gs  # noqa: E402

PAPER1_STAGES = ("edsr-t-x2", "edsr-t-x3", "edsr-t-x4", "squeezesr-kd-x2", "squeezesr-kd-x3", "squeezesr-kd-x4")
SET5_HR = ROOT / "tests" / "data" / "Set5" / "HR"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu_run():
    mod = _load("gpu_run", SCRIPT)
    mod._RUNS[0] = 1  # each in-process run's budget counts from its own start, not from this import
    return mod


@pytest.fixture(scope="module")
def bundle_model():
    return _load("bundle_model", ROOT / "scripts" / "bundle_model.py")


def weights_of(st: dict, dest: Path, *outs: Path) -> Path:
    """A stage's weights, out of the models pack its record names, from whichever --out holds it."""
    for out in outs:
        found = gs.find_weights(out, st["name"], st.get("returned_in"))
        if found is not None and (out / st["returned_in"]).is_file():
            with zipfile.ZipFile(found[0]) as z:
                return Path(z.extract(found[1], dest / out.name))
    raise AssertionError(f"{st['name']}: no weights in {outs}")


# ---------------------------------------------------------------------------------------------- arithmetic


def test_bf16_only_on_capable_cuda():
    assert gp.use_bf16("cuda", True)
    assert not gp.use_bf16("cuda", False)  # pre-Ampere: bf16 is emulated, fp32 is faster
    assert not gp.use_bf16("cpu", True)
    assert not gp.use_bf16("mps", True)


def test_compile_guard_pays_for_its_compile_time():
    # 2x faster after 60 s of compiling: pays in a 300 s stage, not in a 100 s one.
    yes, why = gp.should_compile(10.0, 20.0, 60.0, 300.0)
    assert yes and why.startswith("compile:") and "4800 steps vs eager" in why
    no, why = gp.should_compile(10.0, 20.0, 60.0, 100.0)
    assert not no and why.startswith("eager:")
    # break-even within the margin stays eager; missing measurements stay eager
    assert not gp.should_compile(10.0, 20.0, 50.0, 100.0)[0]
    assert gp.should_compile(10.0, None, 5.0, 1000.0) == (False, "eager: no compile measurement")
    assert not gp.should_compile(10.0, 20.0, None, 1000.0)[0]
    assert not gp.should_compile(10.0, 20.0, 500.0, 300.0)[0]  # compile longer than the stage


def test_budget_split():
    shares = dict(gp.DEFAULT_SHARES)
    assert math.isclose(sum(shares.values()), 1.0)
    left = gp.training_seconds(720.0, 60.0, 10.0, 6)
    assert left == 600.0
    first = gp.stage_seconds(left, shares, "edsr-t-x2", PAPER1_STAGES[1:])
    assert math.isclose(first, 600.0 * 0.46)
    # the last stage gets all that is left; time saved earlier flows to later stages
    assert gp.stage_seconds(50.0, shares, "squeezesr-kd-x4", []) == 50.0
    assert math.isclose(gp.stage_seconds(100.0, shares, "squeezesr-kd-x3", ["squeezesr-kd-x4"]), 50.0)
    assert gp.stage_seconds(0.0, shares, "edsr-t-x2", PAPER1_STAGES[1:]) == 0.0
    assert gp.training_seconds(100.0, 95.0, 10.0, 2) == 0.0
    # the defaults fit 12 minutes: EDSR-T x2 gets most of it
    assert max(shares, key=shares.get) == "edsr-t-x2" and first > 250


def test_steps_rates_and_compile_time():
    assert gp.plan_steps(100.0, 60.0, 0.9) == 5400
    assert gp.plan_steps(0.0, 60.0, minimum=7) == 7
    assert gp.plan_steps(float("nan"), 60.0) == 1
    assert math.isclose(gp.kd_rate(30.0, 10.0), 1 / (1 / 30 + 1 / 30))
    assert gp.kd_rate(0.0, 10.0) == 0.0
    assert gp.checkpoint_every(100.0) == 6000 and gp.checkpoint_every(0.0) == 50
    log = [
        {"event": "train", "step": 20, "steps_per_s": 0.5},  # 40 s: compilation
        {"event": "val", "step": 20, "psnr_y": 30.0},
        {"event": "train", "step": 40, "steps_per_s": 20.0},
        {"event": "train", "step": 60, "steps_per_s": 10.0},
    ]
    rate, first = gp.steady_rate(log)
    assert math.isclose(rate, 40 / 3.0) and math.isclose(first, 40.0)
    assert math.isclose(gp.compile_seconds(first, 20, rate), 40.0 - 1.5)
    assert gp.steady_rate([]) == (None, None)
    assert gp.steady_rate(log[:1]) == (0.5, 40.0)


def test_report_table():
    summary = {
        "env": {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0"}, "precision": "bf16 autocast",
        "probe": {"archs": {"edsr-t": {"scale": 2, "batch": 32, "patch": 48, "steps_per_s": 50.0,
                                       "compiled": {"steps_per_s": 70.0, "compile_s": 42.0}},
                            "swinir": {"error": "OutOfMemoryError: ..."}}},
        "stages": [{"name": "edsr-t-x2", "status": "done", "steps": 100, "steps_planned": 100, "seconds": 3.0,
                    "steps_per_s": 33.3, "compile": True, "eval": {"Set5": {"psnr_y": 37.1234}}}],
    }
    text = gp.report(summary)
    assert "| edsr-t x2 | 32 x 48 | 50.0 | 3000 | 1600 | 70.0 | 42 |" in text
    assert "| swinir x2 |" in text  # a failed probe still gets its row
    assert "| edsr-t-x2 | done | 100/100 | 3 | 33.3 | yes | 37.12 | - |" in text
    assert "NVIDIA H200" in text


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--minutes", "0"], "--minutes 0.0: must be positive"),
        (["--shares", "edsr-t-x2=x"], "is not a number"),
        (["--shares", "nope=1"], "expected STAGE=FRACTION"),
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--compile", "maybe"], "invalid choice"),
        (["--minutes", "1", "--probe-minutes", "1"], "leave no time"),
        (["--report", "/no/such/summary.json"], "not a readable gpu_run summary"),
        (["--plan", "paper3"], "invalid choice"),
        (["--plan", "paper2", "--scales", "2,5"], "--scales 2,5: 5 is not one of 2, 3, 4"),
        (["--plan", "paper2", "--students", "4"], "--students 4: 4 is not one of 1, 2, 3"),
        (["--plan", "paper2", "--students", "x"], "'x' is not a whole number"),
        (["--plan", "paper2", "--shares", "swinir-s3-x2=0.1"], "a twin trains its KD student's steps; set the share of swinir-s3-kd-x2"),
        (["--plan", "paper2", "--shares", "edsr-t-x2=0.1"], "expected STAGE=FRACTION with STAGE one of swinir4-srkd-x2"),
        (["--plan", "paper2", "--alpha", "1.5"], "--alpha 1.5: must lie in [0, 1]"),
        (["--plan", "paper2", "--p2-teacher", "bsrn-x{scale}"], "only {s} (the scale) may stand in braces"),
        (["--resume", "/no/such/run"], "--resume /no/such/run: no such folder or file"),
        (["--evaluate", "/no/such/run"], "--evaluate /no/such/run: holds no summary.json"),
        (["--pack-mb", "0"], "--pack-mb 0.0: must be positive"),
        (["--carry-check", "/no/such/run", "--data", "/no/such/data"], "--carry-check: /no/such/data: no such folder"),
    ],
)
def test_bad_options_are_one_line(gpu_run, capsys, argv, message):
    assert gpu_run.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- smoke
# The smoke runs' budgets are short: a run fills its budget (each stage takes its share of what is
# left), so the budget is the test's time. Per stage, set-up, export and scoring two small crops
# take well under the --stage-overhead reserved.
FAST = ["--eval-minutes", "0.01", "--stage-overhead", "0.75"]


def _small_val(tmp_path: Path, name: str = "val") -> Path:
    """Two Set5 crops: evaluation that takes a fraction of a second per tiny model."""
    val = tmp_path / name / "HR"
    val.mkdir(parents=True)
    for f in sorted(SET5_HR.iterdir())[:2]:
        Image.open(f).convert("RGB").crop((0, 0, 96, 96)).save(val / f"{f.stem}.png")
    return val.parent



def test_smoke_run_stops_and_resumes(gpu_run, tmp_path, capsys):
    out1, out2, work = tmp_path / "out1", tmp_path / "out2", tmp_path / "work"
    run = ["--smoke", "--minutes", "0.2", "--val", str(_small_val(tmp_path, "Set5")), "--work", str(work)]
    # First "device call": stopped cleanly by --call-minutes part-way through the plan.
    assert gpu_run.main([*run, *FAST, "--probe-minutes", "0.04", "--call-minutes", "0.08", "--out", str(out1)]) == 0
    first = json.loads((out1 / "summary.json").read_text())
    assert first["format"] == gpu_run.FORMAT and not first["complete"]
    assert set(first["probe"]["archs"]) == {"edsr-t", "squeezesr", "swinir"}
    assert all(p["steps_per_s"] > 0 for p in first["probe"]["archs"].values())
    assert "--resume" in (out1 / "gpu_run.log").read_text()
    # A second run without --resume must not overwrite the first.
    assert gpu_run.main(["--smoke", "--out", str(out2), "--work", str(work)]) == 2
    capsys.readouterr()

    # Second call: a fresh, empty --out (the device tool empties $OUT); --resume finishes the plan.
    assert gpu_run.main([*run, "--resume", "--out", str(out2)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["complete"] and summary["invocations"] == 2
    # (How long it took is not asserted: under load a wall-clock bound fails by chance; the budget
    # arithmetic is tested on gpu_plan's functions above.)
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == list(PAPER1_STAGES)
    assert all(s["status"] in ("done", "stopped", "skipped") for s in stages.values())
    assert stages["edsr-t-x2"]["status"] in ("done", "stopped")
    files = sorted(p.name for p in out2.iterdir())
    assert len(files) <= 8  # what the device tool returns at most
    assert {"summary.json", "gpu_run.log", "resume.zip"} <= set(files)
    for st in stages.values():
        if st["status"] == "skipped":
            continue
        assert st["weights"] == f"{st['name']}.safetensors" and "Set5" in st["eval"] and st["eval"]["Set5"]["psnr_y"] > 10
        lm = load_checkpoint(weights_of(st, tmp_path / "got", out1, out2))
        assert (lm.spec.name, lm.scale) == (st["arch"], st["scale"])
        assert st["compile"] is False and st["compile_reason"].startswith("eager: not on CUDA")
        if st["kd"]:
            assert json.loads(lm.metadata["provenance"])["recipe"] == "paper1-feature-kd"
        if st["scale"] != 2 and not st["kd"]:
            assert st["init"].endswith("edsr-t-x2.safetensors")
    assert "| stage | status |" in printed

    assert gpu_run.main(["--report", str(out2 / "summary.json")]) == 0
    table = capsys.readouterr().out
    assert "| edsr-t x2 | 4 x 16 |" in table and "| squeezesr-kd-x4 |" in table


# ---------------------------------------------------------------------------------------------- paper 2


def test_paper2_plan_names_and_shares():
    stages = gp.paper2_stages()
    names = [s.name for s in stages]
    assert names[:7] == ["swinir4-srkd-x2", "swinir-s3-kd-x2", "swinir-s3-x2", "swinir-s2-kd-x2", "swinir-s2-x2",
                         "swinir-s1-kd-x2", "swinir-s1-x2"]
    assert len(stages) == 21 and names[7] == "swinir4-srkd-x3" and names[14] == "swinir4-srkd-x4"
    by = {s.name: s for s in stages}
    assert by["swinir4-srkd-x3"].init == "swinir4-srkd-x2" and by["swinir4-srkd-x2"].init is None
    assert by["swinir4-srkd-x4"].init == "swinir4-srkd-x3"  # x2's body, trained further at x3
    kd, twin = by["swinir-s2-kd-x4"], by["swinir-s2-x4"]
    assert (kd.role, kd.blocks, kd.teacher, kd.from_teacher) == ("kd", 2, "swinir4-srkd-x4", True)
    assert (twin.role, twin.init, twin.init_required, twin.twin_of, twin.teacher) == ("twin", "swinir4-srkd-x4", True, kd.name, None)
    shares = gp.default_shares(stages)
    assert math.isclose(sum(shares.values()), 1.0) and "swinir-s2-x4" not in shares  # twins ride on their student's share
    assert max(shares, key=shares.get) == "swinir4-srkd-x2"
    both = gp.plan_stages("all")
    assert [s.name for s in both][:6] == list(PAPER1_STAGES) and len(both) == 27
    assert math.isclose(sum(gp.default_shares(both).values()), 2.0)  # each paper gets half
    small = gp.paper2_stages(scales=(4,), students=(1,))
    assert [s.name for s in small] == ["swinir4-srkd-x4", "swinir-s1-kd-x4", "swinir-s1-x4"] and small[0].init is None
    assert gp.p2_teacher_name(3) == "swinir4-srkd-x3" and gp.p2_student_name(1, 2, False) == "swinir-s1-x2"


def test_paper2_rates_and_pair_split():
    assert math.isclose(gp.swinir_rate(10.0, 4, 4), 10.0)
    assert math.isclose(gp.swinir_rate(10.0, 4, 1), 1 / (0.1 * 0.15 + 0.1 * 0.85 / 4))
    assert gp.swinir_rate(0.0, 4, 1) == 0.0
    kd_s, twin_s = gp.pair_split(90.0, 10.0, 20.0)  # a KD step costs twice a twin's: the same steps each
    assert math.isclose(kd_s, 60.0) and math.isclose(twin_s, 30.0) and math.isclose(kd_s * 10, twin_s * 20)
    assert gp.pair_split(10.0, 0.0, 5.0) == (5.0, 5.0)
    assert math.isclose(gp.twin_seconds(100, 10.0, 0.5), 20.0) and gp.twin_seconds(100, 0.0, 0.5) == 0.0


def test_paper2_report_compares_students_with_twins_and_teacher():
    ev = lambda s5, u: {"Set5": {"psnr_y": s5}, "Urban100": {"psnr_y": u}}  # noqa: E731
    summary = {"stages": [
        {"name": "swinir4-srkd-x2", "paper": 2, "role": "teacher", "scale": 2, "blocks": 4, "status": "done", "eval": ev(37.5, 31.0)},
        {"name": "swinir-s3-kd-x2", "paper": 2, "role": "kd", "scale": 2, "blocks": 3, "status": "done", "eval": ev(37.47, 30.96)},
        {"name": "swinir-s3-x2", "paper": 2, "role": "twin", "scale": 2, "blocks": 3, "status": "done", "eval": ev(37.4, 30.9)},
        {"name": "swinir-s1-kd-x2", "paper": 2, "role": "kd", "scale": 2, "blocks": 1, "status": "done", "eval": {"Set5": {"psnr_y": 36.9}}},
    ]}
    rows = {(r["blocks"], r["set"]): r for r in gp.p2_comparison(summary)}
    assert math.isclose(rows[(3, "Set5")]["kd_minus_twin"], 0.07) and math.isclose(rows[(3, "Urban100")]["kd_minus_teacher"], -0.04)
    assert rows[(1, "Set5")]["twin"] is None and rows[(1, "Set5")]["kd_minus_twin"] is None
    text = gp.report(summary)
    assert "Set5 PSNR-Y | Set14 PSNR-Y | Urban100 PSNR-Y |" in text
    assert "| x2 | 3 | Urban100 | 31.00 | 30.96 | 30.90 | 0.060 | -0.040 |" in text
    assert "| x2 | 1 | Set5 | 37.50 | 36.90 | - | - | -0.600 |" in text


def _tiny_state(tmp_path: Path) -> Path:
    train(TrainConfig(arch="squeezesr", scale=2, data=[SET5_HR], out=tmp_path / "run", steps=3, batch=2, patch=12,
                      arch_config={"n_feats": 8, "squeeze": 4, "expand1x1": 4}, val_every=0, log_every=1,
                      device="cpu", quiet=True, threads=1))
    return tmp_path / "run" / "state.pt"


def test_compact_state_halves_and_restores(tmp_path):
    path = _tiny_state(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    packed = torch.load(io.BytesIO(gs.state_bytes(path)), map_location="cpu", weights_only=True)
    assert {v.dtype for v in packed["model"].values()} == {torch.float16} and packed["compacted"]
    assert {v.dtype for v in packed["ema"].values()} == {torch.float16}
    moments = [s for s in packed["optimizer"]["state"].values()]
    assert {m["exp_avg"].dtype for m in moments} == {m["exp_avg_sq"].dtype for m in moments} == {torch.bfloat16}
    assert all(m["step"].dtype == s["step"].dtype for m, s in zip(moments, state["optimizer"]["state"].values()))
    back = gs.expand_state(packed)
    for k, v in state["model"].items():
        assert back["model"][k].dtype == torch.float32 and torch.allclose(back["model"][k], v, rtol=1e-3, atol=1e-4)
    for m, s in zip(back["optimizer"]["state"].values(), state["optimizer"]["state"].values()):
        assert torch.allclose(m["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-2, atol=1e-12)
        assert torch.allclose(m["exp_avg"], s["exp_avg"], rtol=1e-2, atol=1e-9)
    assert back["rng"]["torch"].equal(state["rng"]["torch"]) and back["step"] == state["step"] == 3
    # Smaller levels: Adam's first moment restarts from zero, then the raw weights from the EMA.
    def tensor_bytes(st):
        opt = [v for s in st["optimizer"]["state"].values() for v in s.values() if v.dim()]
        return sum(v.numel() * v.element_size() for v in [*st.get("model", {}).values(), *st["ema"].values(), *opt])

    assert tensor_bytes(packed) * 2 == tensor_bytes(state)  # (a tiny model's file is mostly pickle's overhead)
    sizes = [len(gs.state_bytes(path, level)) for level in range(3)]
    assert path.stat().st_size > sizes[0] > sizes[1] > sizes[2]
    one = gs.expand_state(gs.compact_state(state, 1))
    assert all(not m["exp_avg"].any() and m["exp_avg_sq"].dtype == torch.float32 for m in one["optimizer"]["state"].values())
    two = gs.compact_state(state, 2)
    assert "model" not in two and two["compacted"]["left_out"] == ["exp_avg", "model"]
    two = gs.expand_state(two)
    assert all(torch.equal(two["model"][k], two["ema"][k]) for k in two["ema"])


def test_pack_round_trip_and_refusals(tmp_path):
    path = _tiny_state(tmp_path)
    pack = tmp_path / "resume.zip"
    gs.write_zip(pack, {"summary.json": b'{"format": "x"}', "runs/s/state.pt": gs.state_bytes(path),
                        "weights/t.safetensors": tmp_path / "run" / "final.safetensors"})
    work = tmp_path / "work"
    assert gs.unpack(pack, work) == ["s"] and gs.read_pack_summary(pack) == {"format": "x"}
    assert (work / "summary.json").is_file() and (work / "weights" / "t.safetensors").is_file()
    assert torch.load(work / "s" / "state.pt", weights_only=True)["model"]["head.weight"].dtype == torch.float32
    evil = tmp_path / "evil.zip"
    gs.write_zip(evil, {"../outside.txt": b"x"})
    with pytest.raises(ConfigError, match="not a member name"):
        gs.unpack(evil, work)
    (tmp_path / "bad.zip").write_bytes(b"no zip")
    with pytest.raises(ConfigError, match="not a readable gpu_run resume pack"):
        gs.read_pack_summary(tmp_path / "bad.zip")
    assert gs.part_name(3, 1) == "models-3.zip" and gs.part_name(3, 2) == "models-3-2.zip"
    half = gs.half_weights(tmp_path / "run" / "final.safetensors")
    (tmp_path / "h.safetensors").write_bytes(half)
    lm = load_checkpoint(tmp_path / "h.safetensors")
    assert lm.spec.name == "squeezesr" and "provenance" in lm.metadata  # the metadata travels with the halves


def test_bundle_names_cannot_pass_for_the_official_teacher():
    kd = {"teacher": "runs/gpu-run/weights/swinir4-srkd-x2.safetensors", "recipe": "paper2-alpha-kd", "alpha": 0.75}
    check_bundle_name("swinir-s3-kd-x2", "swinir", 2, {"blocks": 3}, kd)
    check_bundle_name("swinir-s3-x2", "swinir", 2, {"blocks": 3}, {"recipe": "l1"})
    check_bundle_name("swinir4-srkd-x4", "swinir", 4, {"blocks": 4}, {"recipe": "l1"})
    check_bundle_name("squeezesr-kd-x2", "squeezesr", 2, {}, {"teacher": "edsr-t-x2", "recipe": "paper1-feature-kd"})
    bad = [
        ("swinir4-x2", "swinir", 2, {"blocks": 4}, {}, "names the official SwinIR-light release"),
        ("swinir3-x2", "swinir", 2, {"blocks": 3}, kd, "names the official SwinIR-light release"),
        ("swinir-s3-kd-x4", "swinir", 2, {"blocks": 3}, kd, "these weights upscale x2, so the name ends in -x2"),
        ("swinir-s2-kd-x2", "swinir", 2, {"blocks": 3}, kd, "names a SwinIR with 2 RSTBs, these weights are swinir with blocks=3"),
        ("swinir-s3-x2", "swinir", 2, {"blocks": 3}, kd, "e.g. swinir-s3-kd-x2"),
        ("swinir-s3-kd-x2", "swinir", 2, {"blocks": 3}, {"recipe": "l1"}, "e.g. swinir-s3-x2"),
        ("my-swinir-x2", "swinir", 2, {"blocks": 3}, {}, "a SwinIR trained by srkd is named swinir4-srkd-x2"),
        ("imdn-x2", "imdn", 2, {}, {}, "the zoo's entry for official weights"),
        ("Bad Name-x2", "squeezesr", 2, {}, {}, "lower-case letters"),
    ]
    for name, arch, scale, config, prov, words in bad:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            check_bundle_name(name, arch, scale, config, prov, unbundled=["imdn-x2", "swinir4-x2"])


def test_swinir_learns_another_architectures_output_only():
    from srkd_cli.archs import build_model
    from srkd_cli.training.recipes import FeatureKD, make_distill_recipe

    swin = build_model("swinir", 2, blocks=1, embed_dim=12, depth=2, num_heads=2, window_size=4)
    teacher = build_model("squeezesr", 2, n_feats=8, squeeze=4, expand1x1=4)
    with pytest.raises(ConfigError, match="learns only its output; give --out-weight > 0"):
        make_distill_recipe("swinir", swin, "squeezesr", teacher, out_weight=0.0)
    assert make_distill_recipe("swinir", swin, "squeezesr", teacher).out_weight == 1.0  # not given: output KD's default
    recipe = make_distill_recipe("swinir", swin, "squeezesr", teacher, out_weight=0.5)
    assert isinstance(recipe, FeatureKD) and recipe.name == "output-kd" and recipe.pairs == [] and recipe.beta == 0.0
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    total, parts = recipe(lambda x: (swin(x), {}), lr, hr)
    assert set(parts) == {"l1", "kd_out"} and torch.isclose(total, parts["l1"] + 0.5 * parts["kd_out"])


@pytest.fixture(scope="module")
def paper2_run(gpu_run, tmp_path_factory):
    """The whole paper-2 plan in miniature (x2 and x4, a 3-RSTB student and its twin) over two "sessions":
    the first stopped by its call limit inside the teacher, the second on an empty --work with only what a
    session carries (resume.zip, summary.json). The teachers also learn a tiny SqueezeSR's output
    (--p2-teacher). One run, shared by the tests below: the budget, not the models, sets its time."""
    from srkd_cli.archs import build_model
    from srkd_cli.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("paper2")
    cfg = {"n_feats": 8, "squeeze": 4, "expand1x1": 4}
    for s in (2, 4):
        save_checkpoint(tmp / f"sq-x{s}.safetensors", build_model("squeezesr", s, **cfg), "squeezesr", cfg)
    val = _small_val(tmp)
    out1, out2 = tmp / "out1", tmp / "out2"
    common = ["--val", str(val)]
    # --pack-mb below any state: the pack falls to its smallest level (raw weights from the EMA on resume) and says so.
    first = [*FAST, "--smoke", "--plan", "paper2", "--scales", "2,4", "--students", "3", "--minutes", "0.25",
             "--probe-minutes", "0.02", "--call-minutes", "0.09", "--pack-mb", "0.01", "--p2-teacher", str(tmp / "sq-x{s}.safetensors"),
             "--out", str(out1), "--work", str(tmp / "work1"), *common]
    printed = []
    with contextlib.redirect_stdout(io.StringIO()) as f:
        assert gpu_run.main(first) == 0
    printed.append(f.getvalue())
    # The next session: a fresh machine, carrying what the device tool's `carry` brings.
    carried = tmp / "carried"
    carried.mkdir()
    first_summary = json.loads((out1 / "summary.json").read_text())
    for name in ("resume.zip", "summary.json"):
        shutil.copy(out1 / name, carried / name)
    with contextlib.redirect_stdout(io.StringIO()) as f:
        assert gpu_run.main(["--resume", str(carried), "--out", str(out2), "--work", str(tmp / "work2"), *common]) == 0
    printed.append(f.getvalue())
    return SimpleNamespace(tmp=tmp, val=val, out1=out1, out2=out2, first=first_summary, printed=printed,
                           summary=json.loads((out2 / "summary.json").read_text()))


def test_paper2_smoke_resumes_on_a_fresh_machine_and_bundles(paper2_run, bundle_model, tmp_path, capsys, monkeypatch, run_cli):
    """paper2_run's two sessions; then a student bundled into a zoo and run by name."""
    out1, out2, val, first = paper2_run.out1, paper2_run.out2, paper2_run.val, paper2_run.first
    assert not first["complete"] and first["plan"] == "paper2" and set(first["probe"]["archs"]) == {"swinir"}
    teacher1 = first["stages"][0]
    assert teacher1["name"] == "swinir4-srkd-x2" and teacher1["status"] == "paused" and teacher1["steps"] > 0
    assert first["resume_pack"]["states"] == ["swinir4-srkd-x2"] and first["resume_pack"]["level"] == 2
    assert "STILL OVER" in (out1 / "gpu_run.log").read_text()
    with zipfile.ZipFile(out1 / "resume.zip") as z:
        state = torch.load(io.BytesIO(z.read("runs/swinir4-srkd-x2/state.pt")), weights_only=True)
    assert state["step"] == teacher1["steps"] and state["compacted"]["left_out"] == ["exp_avg", "model"]
    assert sorted(p.name for p in out1.iterdir()) == ["gpu_run.log", "models-1.zip", "resume.zip", "summary.json"]

    printed = paper2_run.printed[1]
    summary = paper2_run.summary
    assert summary["complete"] and summary["invocations"] == 2 and summary["settings"]["scales"] == [2, 4]
    assert "training states of swinir4-srkd-x2 restored" in printed and "resuming at its state.pt" in printed
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == ["swinir4-srkd-x2", "swinir-s3-kd-x2", "swinir-s3-x2", "swinir4-srkd-x4", "swinir-s3-kd-x4", "swinir-s3-x4"]
    assert stages["swinir4-srkd-x2"]["steps"] > teacher1["steps"]
    got = tmp_path / "got"
    for s in (2, 4):
        teacher, kd, twin = (stages[n] for n in (f"swinir4-srkd-x{s}", f"swinir-s3-kd-x{s}", f"swinir-s3-x{s}"))
        assert all(st["status"] in ("done", "stopped") and st["eval"]["val"]["psnr_y"] > 5 for st in (teacher, kd, twin))
        assert twin["steps"] == kd["steps"] and twin["steps_planned"] == kd["steps_planned"]  # same steps, same schedule
        lm_kd, lm_twin = (load_checkpoint(weights_of(st, got, out1, out2)) for st in (kd, twin))
        p_kd, p_twin = (json.loads(lm.metadata["provenance"]) for lm in (lm_kd, lm_twin))
        assert lm_kd.config["blocks"] == lm_twin.config["blocks"] == 3
        assert p_kd["recipe"] == "paper2-alpha-kd" and p_kd["alpha"] == 0.75 and p_kd["init_from_teacher"]
        assert p_twin["recipe"] == "l1" and p_twin["teacher"] is None
        # The same start: the student from its teacher's file, the twin from the very same file.
        assert Path(p_kd["teacher"]).name == Path(p_twin["init"]).name == f"swinir4-srkd-x{s}.safetensors"
        assert p_kd["teacher_sha256"] == p_twin["init_sha256"]
    assert Path(stages["swinir4-srkd-x4"]["init"]).name == "swinir4-srkd-x2.safetensors"  # x4 from x2's body
    assert "| x4 | 3 | val |" in printed

    # Bundled under its srkd name, the student runs by name; the official teacher's name is refused.
    student = weights_of(stages["swinir-s3-kd-x2"], got, out1, out2)
    assert bundle_model.main([str(student), "swinir4-x2", "--data", str(val), "--weights-dir", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err
    assert "names the official SwinIR-light release" in err and err.count("\n") == 1
    assert bundle_model.main([str(student), "swinir-s3-kd-x2", "--data", str(val),
                              "--weights-dir", str(tmp_path / "zoo" / "weights")]) == 0
    entry = capsys.readouterr().out
    assert entry.startswith('[models."swinir-s3-kd-x2"]') and "config = { blocks = 3," in entry and "recipe paper2-alpha-kd" in entry
    (tmp_path / "zoo" / "weights.toml").write_text(entry)
    zoo = Zoo.from_file(tmp_path / "zoo" / "weights.toml", bundled_dir=tmp_path / "zoo" / "weights")
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: zoo)
    image = tmp_path / "in.png"
    Image.open(val / "HR" / "baby.png").crop((0, 0, 40, 32)).save(image)
    code, _, err = run_cli("upscale", str(image), "--model", "swinir-s3-kd-x2", "-o", str(tmp_path / "up.png"),
                           "--device", "cpu", "--quiet")
    assert code == 0, err
    assert Image.open(tmp_path / "up.png").size == (80, 64)


def test_paper2_teacher_learns_a_given_models_output(paper2_run, tmp_path):
    """--p2-teacher: the SwinIR teacher's L1 plus L1 to another model's cached output (here a tiny SqueezeSR)."""
    stages = {s["name"]: s for s in paper2_run.summary["stages"]}
    for s in (2, 4):
        st = stages[f"swinir4-srkd-x{s}"]
        assert st["status"] in ("done", "stopped")
        prov = json.loads(load_checkpoint(weights_of(st, tmp_path / "got", paper2_run.out1, paper2_run.out2)).metadata["provenance"])
        assert (prov["recipe"], prov["out_weight"], prov["teacher_cache"]) == ("output-kd", 0.5, "ram")
        assert prov["teacher"].endswith(f"sq-x{s}.safetensors")
