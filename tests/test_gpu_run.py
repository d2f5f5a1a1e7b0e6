"""scripts/gpu_run.py: the plan's arithmetic (gpu_plan), its one-line errors, and the --smoke run end to end.

The smoke run is the GPU session in miniature on the CPU (tiny models, Set5 as training data),
stopped by --call-minutes part-way and finished with --resume, as a device call's limit would.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.training import gpu_plan as gp

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_run.py"


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    first = gp.stage_seconds(left, shares, "edsr-t-x2", gp.STAGES[1:])
    assert math.isclose(first, 600.0 * 0.46)
    # the last stage gets all that is left; time saved earlier flows to later stages
    assert gp.stage_seconds(50.0, shares, "squeezesr-kd-x4", []) == 50.0
    assert math.isclose(gp.stage_seconds(100.0, shares, "squeezesr-kd-x3", ["squeezesr-kd-x4"]), 50.0)
    assert gp.stage_seconds(0.0, shares, "edsr-t-x2", gp.STAGES[1:]) == 0.0
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
    assert gp.stage_arch("squeezesr-kd-x3") == ("squeezesr", 3, True)
    assert gp.stage_arch("edsr-t-x4") == ("edsr-t", 4, False)


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
    ],
)
def test_bad_options_are_one_line(gpu_run, capsys, argv, message):
    assert gpu_run.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- smoke


def test_smoke_run_stops_and_resumes(gpu_run, tmp_path, capsys):
    out1, out2, work = tmp_path / "out1", tmp_path / "out2", tmp_path / "work"
    # First "device call": stopped cleanly by --call-minutes part-way through the plan.
    assert gpu_run.main(["--smoke", "--minutes", "0.5", "--call-minutes", "0.2", "--out", str(out1), "--work", str(work)]) == 0
    first = json.loads((out1 / "summary.json").read_text())
    assert first["format"] == gpu_run.FORMAT and not first["complete"]
    assert set(first["probe"]["archs"]) == {"edsr-t", "squeezesr", "swinir"}
    assert all(p["steps_per_s"] > 0 for p in first["probe"]["archs"].values())
    assert "--resume" in (out1 / "gpu_run.log").read_text()
    # A second run without --resume must not overwrite the first.
    assert gpu_run.main(["--smoke", "--out", str(out2), "--work", str(work)]) == 2
    capsys.readouterr()

    # Second call: a fresh, empty --out (the device tool empties $OUT); --resume finishes the plan.
    assert gpu_run.main(["--smoke", "--minutes", "0.5", "--resume", "--out", str(out2), "--work", str(work)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["complete"] and summary["invocations"] == 2
    assert summary["elapsed_s"] <= 0.5 * 60 + 30  # the budget held, give or take one stage's set-up
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == list(gp.STAGES)
    assert all(s["status"] in ("done", "stopped", "skipped") for s in stages.values())
    assert stages["edsr-t-x2"]["status"] in ("done", "stopped")
    files = sorted(p.name for p in out2.iterdir())
    assert len(files) <= 8  # what the device tool returns at most
    assert {"summary.json", "gpu_run.log"} <= set(files)
    for st in stages.values():
        if st["status"] == "skipped":
            continue
        assert st["weights"] in files and "Set5" in st["eval"] and st["eval"]["Set5"]["psnr_y"] > 10
        lm = load_checkpoint(out2 / st["weights"])
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
