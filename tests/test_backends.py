"""The backend registry (srkd_cli/backends.py): every registered backend, at every precision its
own graph runs on the CPU, stays within the tolerance its record declares; the CLI's --backend
choices, help and errors are the registry's; `srkd eval` scores what `srkd upscale` writes."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import typer

from srkd_cli.archs import build_model
from srkd_cli.backends import BACKENDS, backend_choices, backend_help, pick_backend, prepare
from srkd_cli.errors import ConfigError
from srkd_cli.evaluate import to_tensor
from srkd_cli.imaging.io import read_uint8
from srkd_cli.loader import load_model
from srkd_cli.quantize import int8_difference

# One with every fast form (re-parameterised, graph form, small receptive field), one with none.
TINY = {"squeezesr": {"n_feats": 16, "blocks": 2, "squeeze": 4, "expand1x1": 8}, "edsr-t": {"n_feats": 8, "blocks": 1, "modules_per_block": 1}}


def tiny(arch: str):
    torch.manual_seed(0)
    m = build_model(arch, 2, **TINY[arch]).eval()
    with torch.no_grad():  # a nudge away from the init, so biases are not all zero
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def _runnable(name: str) -> None:
    backend = BACKENDS[name]
    if not backend.available():
        pytest.skip(f"{name}: what it needs is not installed")
    if name == "compile" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_is_within_its_declared_tolerance(name, int8_env, set5, monkeypatch):
    from srkd_cli.runtime import allocator

    _runnable(name)
    monkeypatch.setattr(allocator, "_TUNED", False)  # tiles, whatever an earlier in-process upscale did
    backend = BACKENDS[name]
    assert list(backend.precisions)[0] == "fp32" and backend.precisions["fp32"].exact
    x = torch.rand(1, 3, 150, 37, generator=torch.Generator().manual_seed(1))  # taller than one tile or piece
    for arch in TINY if name != "compile" else ("squeezesr",):  # inductor takes ~10 s a model here
        model = tiny(arch)
        runner = prepare(model, name, "cpu", example=x, threads=2)
        assert runner.scale == 2
        with torch.inference_mode():
            diff = (runner(x) - model(x)).abs().max().item()
        assert diff <= backend.precisions["fp32"].tolerance, (arch, diff)
    for precision, p in backend.precisions.items():
        if precision == "fp32" or "cpu" not in p.devices:
            continue
        assert not p.exact  # the only other precisions are quantised: needs a trained model to mean anything
        model = load_model("squeezesr-x2", scale=2).model
        lr = to_tensor(read_uint8(set5 / "LR_bicubic" / "X2" / "birdx2.png")).float()
        diff = int8_difference(model, prepare(model, name, "cpu", threads=2, precision=precision), [lr])
        assert diff <= p.tolerance, (precision, diff)


def test_pick_backend_and_prepare_speak_the_registry():
    squeeze, edsr = tiny("squeezesr"), tiny("edsr-t")
    for model in (squeeze, edsr):
        for precision in ("fp32", "bf16", "int8"):
            assert pick_backend(model, "cpu", precision) in BACKENDS
    assert pick_backend(squeeze, "cpu", "int8") == "onnxruntime"  # the only record with int8
    with pytest.raises(ConfigError, match=re.escape(f"--backend tensorrt: choose one of {', '.join(BACKENDS)}")):
        prepare(squeeze, "tensorrt")
    with pytest.raises(ConfigError, match=r"--precision fp16 runs on --backend torch or torch-opt \(or auto\), not onnxruntime"):
        prepare(squeeze, "onnxruntime", precision="fp16")
    with pytest.raises(ConfigError, match="only SqueezeSR, RepSR or SRVGGNetCompact-architecture models have an int8 path, not EDSRT"):
        prepare(edsr, "onnxruntime", precision="int8")


def _backend_help(command: str) -> str:
    from srkd_cli.cli import app

    cmd = typer.main.get_command(app).commands[command]
    return next(p.help for p in cmd.params if p.name == "backend")


def _names_in_help(text: str):
    return re.findall(r"(?:^|\), )([\w-]+) \(", text)


@pytest.mark.parametrize("command,upscale", [("upscale", True), ("eval", True), ("bench", False)])
def test_backend_help_and_errors_list_the_registry(command, upscale, run_cli, set5, tmp_path):
    names = [b.name for b in BACKENDS.values() if b.in_upscale or not upscale]
    assert list(backend_choices(upscale)) == ["auto", *names]
    text = _backend_help(command)
    assert backend_help(upscale) in text
    assert _names_in_help(backend_help(upscale)) == ["auto", *names]
    args = {
        "upscale": ["upscale", set5 / "LR_bicubic" / "X2" / "birdx2.png", "-o", tmp_path / "o.png", "--device", "cpu"],
        "eval": ["eval", "-m", "squeezesr-x2", "-d", set5, "-s", "2", "--device", "cpu"],
        "bench": ["bench", "--size", "16x16", "-q"],
    }[command]
    code, _, err = run_cli(*args, "--backend", "tensorrt")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    listed = err.split("--backend tensorrt: choose ", 1)[1].strip().split(", ")
    assert listed == ["auto", *names]


@pytest.mark.parametrize("backend,precision", [("auto", "fp32"), ("torch", "fp32"), ("torch-opt", "fp32"),
                                               ("onnxruntime", "fp32"), ("onnxruntime", "int8")])
def test_eval_scores_what_upscale_writes(backend, precision, run_cli, set5, tmp_path, int8_env):
    _runnable("onnxruntime" if backend == "auto" else backend)
    data = tmp_path / "Two"
    for stem in ("baby", "woman"):  # two images keep it quick; these two tell float64 from float32 input apart
        (data / "HR").mkdir(parents=True, exist_ok=True)
        (data / "LR_bicubic" / "X2").mkdir(parents=True, exist_ok=True)
        shutil.copy(set5 / "HR" / f"{stem}.png", data / "HR")
        shutil.copy(set5 / "LR_bicubic" / "X2" / f"{stem}x2.png", data / "LR_bicubic" / "X2")
    flags = ["--backend", backend, "--precision", precision, "--device", "cpu"]
    code, _, err = run_cli("upscale", data / "LR_bicubic" / "X2", "-m", "squeezesr-x2", "-o", tmp_path / "sr",
                           "--suffix", "", "--quiet", *flags)
    assert code == 0, err
    code, _, err = run_cli("eval", "-m", "squeezesr-x2", "--sr", tmp_path / "sr", "-d", data, "-s", "2", *flags,
                           "--json", tmp_path / "e.json")
    assert code == 0, err
    ran, written = json.loads((tmp_path / "e.json").read_text())
    assert written["model"] == "sr:sr"
    for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert ran[key] == written[key], key  # the same pixels, not merely close ones


def test_build_upscaler_is_the_public_way_to_what_srkd_upscale_runs():
    """The API's `build_upscaler` (backends.py, exported from srkd_cli) picks the backend as
    `srkd upscale` does, and its output agrees with eager torch within the backend's tolerance."""
    import srkd_cli

    lm = srkd_cli.load_model("repsr-x2", device="cpu")
    up, label = srkd_cli.build_upscaler(lm)
    ref, torch_label = srkd_cli.build_upscaler(lm, backend="torch")
    assert torch_label == "torch" and label in ("onnxruntime", "torch-opt")
    x = torch.rand(1, 3, 24, 20)
    assert (up(x) - ref(x)).abs().max().item() < 1e-3
