"""Issue 33, part B: architecture options, weights that claim a huge model, run folders, --resume of a
finished run, --time-limit, --alpha, file modes, and a damaged int8 cache entry.

Every check runs `srkd` as a user would, in a subprocess, on real files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from srkd_cli.archs import ARCHS, build_model, get_arch
from srkd_cli.archs.options import OptionError
from srkd_cli.checkpoint import save_checkpoint
from srkd_cli.config import a_or_an
from conftest import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
SET5 = REPO / "tests" / "data" / "Set5"
BUNDLED = REPO / "srkd_cli" / "weights" / "squeezesr-x2.safetensors"
TINY = ["--set", "n_feats=8", "--set", "squeeze=4", "--set", "expand1x1=4", "--blocks", "1"]


def srkd(*args, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m srkd_cli ARGS` in `cwd`: one thread, its own cache and home, offline."""
    full = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SRKD_HOME=str(cwd / "home"),
                SRKD_CACHE=str(cwd / "cache"), HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "srkd_cli", *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


def train_args(out: Path, steps: int = 2, *more) -> list:
    return ["train", "--arch", "squeezesr", *TINY, "--scale", "2", "--data", SET5 / "HR", "--out", out,
            "--steps", steps, "--batch", "2", "--patch", "8", "--device", "cpu", "--threads", "1", *more]


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def usual_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# ---------------------------------------------------------------- architecture options (Medium 7)


@pytest.mark.parametrize("argv,says", [
    (["--arch", "edsr-t", "--set", "n_feats=0"], "edsr-t option n_feats=0: accepts a whole number >= 1"),
    (["--arch", "edsr-t", "--set", "n_feats=-1"], "edsr-t option n_feats=-1: accepts a whole number >= 1"),
    (["--arch", "swinir", "--set", "window_size=0"], "swinir option window_size=0: accepts a whole number >= 1"),
    (["--arch", "swinir", "--set", "embed_dim=7", "--set", "num_heads=2"],
     "swinir option num_heads=2: accepts a divisor of embed_dim (7)"),
    (["--arch", "imdn", "--set", "n_feats=1.5"], "imdn option n_feats=1.5: accepts a whole number >= 16"),
    (["--arch", "bsrn", "--set", "n_feats=[1]"], "bsrn option n_feats='[1]': accepts a whole number >= 16"),
    (["--arch", "squeezesr", "--set", "n_feats=abc"], "squeezesr option n_feats='abc': accepts a whole number >= 2"),
    (["--arch", "carn-m", "--set", "groups=3"], "carn-m option groups=3: accepts a divisor of n_feats (64)"),
    (["--arch", "edsr-t", "--blocks", "0"], "--blocks 0: accepts a whole number >= 1"),
])
def test_train_refuses_bad_architecture_options_in_one_line(tmp_path, argv, says):
    r = srkd("train", *argv, "--scale", "2", "--data", SET5 / "HR", "--out", tmp_path / "run", "--steps", "1",
             "--device", "cpu", cwd=tmp_path)
    assert one_line_error(r) == f"error: {says}"
    assert not (tmp_path / "run").exists()


def test_distill_refuses_zero_student_blocks(tmp_path):
    teacher = save_checkpoint(tmp_path / "t.safetensors", build_model("swinir", 2, blocks=2, embed_dim=12, depth=2,
                              num_heads=2, window_size=4), "swinir", dict(blocks=2, embed_dim=12, depth=2, num_heads=2,
                                                                          window_size=4))
    r = srkd("distill", "--teacher", teacher, "--student", "swinir", "--student-blocks", "0", "--scale", "2",
             "--data", SET5 / "HR", "--out", tmp_path / "run", "--steps", "1", "--device", "cpu", cwd=tmp_path)
    assert one_line_error(r) == "error: --student-blocks 0: accepts a whole number >= 1"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_checks_every_option(arch):
    """The check runs for every registered architecture (those added later too): defaults pass, and a
    word or a zero where a number is wanted is refused with a line naming that option."""
    spec = get_arch(arch)
    assert spec.config() == spec.defaults
    for key, default in spec.defaults.items():
        bad = ["abc"] + ([0] if isinstance(default, (int, float)) and not isinstance(default, bool) and default else [])
        for value in bad:
            with pytest.raises(OptionError) as e:
                spec.config(**{key: value})
            assert e.value.option == key and str(e.value).startswith(f"{spec.name} option {key}="), str(e.value)


# ---------------------------------------------------------------- weights that claim a huge model (Medium 8)


def test_small_file_claiming_a_huge_model_is_refused_before_it_is_built(tmp_path):
    """A 60 KB EDSR-T file whose metadata says n_feats=2000 (a model of ~1.7 GB): refused from the
    tensors' shapes, the process never grows anywhere near that size."""
    small = save_checkpoint(tmp_path / "small.safetensors", build_model("edsr-t", 2, n_feats=8, modules_per_block=1),
                            "edsr-t", dict(n_feats=8, modules_per_block=1))
    with safe_open(str(small), framework="pt") as f:
        meta = dict(f.metadata())
    meta["config"] = json.dumps({**json.loads(meta["config"]), "n_feats": 2000})
    liar = tmp_path / "liar.safetensors"
    save_file(load_file(str(small)), str(liar), metadata=meta)
    assert liar.stat().st_size < 200_000
    r, peak = run_with_peak_rss([sys.executable, "-m", "srkd_cli", "upscale", SET5 / "LR_bicubic" / "X2" / "babyx2.png",
                                 "-o", tmp_path / "o.png", "--weights", liar, "--device", "cpu"],
                                dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
    err = one_line_error(r)
    assert f"{liar}: does not fit edsr-t x2: head.weight has shape [8, 3, 3, 3], the model needs [2000, 3, 3, 3]" in err
    assert peak < 900_000, f"peak RSS {peak // 1024} MB"  # KB; a built model alone is ~1.7 GB
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- run folders, --resume, modes (Medium 5, 9; Low)


def test_a_finished_run_says_completed_and_resume_changes_nothing(tmp_path):
    out = tmp_path / "run"
    # validation every step, losses every 2: the first progress line comes before any loss is known
    r = srkd(*train_args(out, 2, "--log-every", "2", "--val-every", "1", "--val", SET5), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"completed 2 steps: {out / 'final.safetensors'}"), r.stdout
    assert "stopped" not in r.stderr and "nan" not in r.stderr.lower(), r.stderr
    for name in ("final.safetensors", "best.safetensors", "state.pt"):
        assert (out / name).stat().st_mode & 0o777 == usual_mode(), name  # as every other output
    before = snapshot(out)
    r = srkd(*train_args(out, 2, "--resume"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.strip() == f"{out}: the run is complete (step 2, --steps 2); nothing to do (a larger --steps trains it further)"
    assert snapshot(out) == before


def test_weights_without_state_are_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.safetensors").write_bytes(BUNDLED.read_bytes())
    for more in ([], ["--resume"]):
        err = one_line_error(srkd(*train_args(out, 1, *more), cwd=tmp_path))
        assert err == (f"error: --out {out}: holds trained weights (final.safetensors) and no state.pt to resume; "
                       "pass --overwrite to replace them, or choose another --out")
        assert (out / "final.safetensors").read_bytes() == BUNDLED.read_bytes()
    r = srkd(*train_args(out, 1, "--overwrite", "--quiet"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "final.safetensors").read_bytes() != BUNDLED.read_bytes() and (out / "state.pt").is_file()


def test_a_state_that_would_run_code_is_refused_without_torch_advice(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"step": 1, "x": _RunsCode(tmp_path / "pwned")}, out / "state.pt")
    err = one_line_error(srkd(*train_args(out, 2, "--resume"), cwd=tmp_path))
    assert err.startswith(f"error: {out / 'state.pt'}: cannot read the training state: refused to unpickle: it calls ")
    assert "weights_only" not in err and not (tmp_path / "pwned").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- --time-limit (Low)


def test_time_limit_zero_stops_once_set_up_and_negative_is_refused(tmp_path):
    r = srkd(*train_args(tmp_path / "run", 5, "--time-limit", "0"), cwd=tmp_path)
    assert r.returncode == 0 and "stopped at step 0 (time limit 0s)" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "final.safetensors").exists()
    err = one_line_error(srkd(*train_args(tmp_path / "neg", 5, "--time-limit", "-1"), cwd=tmp_path))
    assert err == "error: --time-limit -1: must be >= 0 seconds (0: stop once set up)"


def test_time_limit_is_checked_every_step_not_only_when_logging(tmp_path):
    out = tmp_path / "run"
    r = srkd(*train_args(out, 100_000, "--log-every", "100000", "--time-limit", "1"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    step = int(re.search(r"stopped at step (\d+) \(time limit 1s\)", r.stderr).group(1))
    assert 0 < step < 100_000
    assert torch.load(out / "state.pt", map_location="cpu", weights_only=True)["step"] == step


def test_a_run_finished_past_its_time_limit_says_completed(tmp_path):
    """The time limit runs out during the one step: the run reached --steps, so it is complete, not stopped."""
    out = tmp_path / "run"
    # one step of the default EDSR-T on 4 patches of 48: many GFLOP, far over 0.1 s on any CPU
    r = srkd("train", "--arch", "edsr-t", "--scale", "2", "--data", SET5 / "HR", "--out", out, "--steps", "1",
             "--batch", "4", "--patch", "48", "--device", "cpu", "--threads", "1", "--time-limit", "0.1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("completed 1 steps: "), r.stdout
    assert "stopped" not in r.stderr and (out / "final.safetensors").is_file(), r.stderr


# ---------------------------------------------------------------- distill --alpha, grammar (Low)


@pytest.fixture
def edsr_teacher(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = dict(n_feats=8, modules_per_block=1)
    return save_checkpoint(tmp_path / "edsr.safetensors", build_model("edsr-t", 2, **cfg), "edsr-t", cfg)


def test_distill_alpha_is_checked_and_warned_where_unused(tmp_path, edsr_teacher):
    common = ["--teacher", edsr_teacher, "--student", "squeezesr", "--scale", "2", "--data", SET5 / "HR",
              "--steps", "1", "--batch", "2", "--patch", "8", "--device", "cpu", "--threads", "1"]
    err = one_line_error(srkd("distill", *common, "--alpha", "5", "--out", tmp_path / "a", cwd=tmp_path))
    assert err == "error: --alpha 5: must lie in [0, 1]"
    r = srkd("distill", *common, "--alpha", "0.5", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: --alpha 0.5: recipe paper1-feature-kd does not use it" in r.stderr
    r = srkd("distill", *common, "--init-from-teacher", "--out", tmp_path / "c", cwd=tmp_path)
    assert "a squeezesr student shares no weights with an edsr-t teacher" in one_line_error(r)


def test_article():
    assert [a_or_an(w) for w in ("edsr-t", "imdn", "swinir", "bsrn")] == ["an edsr-t", "an imdn", "a swinir", "a bsrn"]


# ---------------------------------------------------------------- a damaged int8 cache entry (Medium 10)


def test_a_damaged_int8_cache_entry_is_named_and_rebuilt(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("onnx")
    from srkd_cli import quantize
    from srkd_cli.loader import load_model

    monkeypatch.setenv("SRKD_CACHE", str(tmp_path / "cache"))
    model = load_model("squeezesr-x2", offline=True).model
    folder, files = quantize.calibration_files(SET5 / "HR")
    bits = quantize.weight_bits()
    entry = quantize.cache_dir() / f"squeezesr-x2-{quantize.cache_key(model, files, folder, bits)}.onnx"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"\x08\x07garbage, not a protobuf")
    r = srkd("upscale", SET5 / "LR_bicubic" / "X2" / "babyx2.png", "-o", tmp_path / "o.png", "-m", "squeezesr-x2",
             "--precision", "int8", "--device", "cpu", cwd=tmp_path, SRKD_CALIBRATION_DATA=str(SET5 / "HR"))
    assert r.returncode == 0, r.stderr
    assert f"int8 cache: {entry} is damaged (" in r.stderr and "rebuilding it" in r.stderr, r.stderr
    assert (tmp_path / "o.png").is_file()
    assert quantize._read_cached(entry, bits)[1] is None  # the entry was made again, whole
