"""Weights that do not fit, and pickles that would run code: one line, exit 2, at every entry point.

The files are real: the bundled SqueezeSR x2 with one tensor reshaped or two keys dropped, saved
as safetensors (with srkd's metadata) and as .pth, run through the CLI as a user would.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from srkd_cli.archs import ARCHS, build_model, detect_arch
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.errors import CheckpointError

BUNDLED = Path(__file__).resolve().parents[1] / "srkd_cli" / "weights" / "squeezesr-x2.safetensors"
SHAPE = "body.1.squeeze.weight has shape [8, 64, 1, 1], the model needs [16, 64, 1, 1]"
MISSING = "2 missing keys: tail.0.weight, tail.0.bias"


class _RunsCode:
    """Unpickling this would call os.system: weights-only loading must refuse it unread."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """name -> (path, words the one-line error must hold)."""
    root = tmp_path_factory.mktemp("bad-weights")
    sd = load_file(str(BUNDLED))
    with safe_open(str(BUNDLED), framework="pt") as f:
        meta = f.metadata()
    reshaped = {**sd, "body.1.squeeze.weight": torch.zeros(8, 64, 1, 1)}
    partial = {k: v for k, v in sd.items() if not k.startswith("tail.0.")}
    files = {
        "shape.safetensors": (reshaped, SHAPE),
        "shape.pth": (reshaped, SHAPE),
        "missing.safetensors": (partial, MISSING),
        "missing.pth": (partial, MISSING),
    }
    out = {}
    for name, (tensors, words) in files.items():
        path = root / name
        if name.endswith(".pth"):
            torch.save(tensors, path)  # a foreign file: the architecture is found from its keys
        else:
            save_file(tensors, str(path), metadata=meta)  # srkd's own: the metadata names squeezesr
        out[name] = (path, words)
    alien = root / "alien.pth"
    torch.save({"encoder.weight": torch.zeros(3), "decoder.weight": torch.zeros(3, 4)}, alien)
    out["alien.pth"] = (alien, "unknown architecture: 2 tensors such as encoder.weight [3], decoder.weight [3, 4]")
    evil = root / "evil.pth"
    torch.save({"head.weight": torch.zeros(1), "x": _RunsCode(root / "pwned")}, evil)
    out["evil.pth"] = (evil, "refused to unpickle: it calls posix.system, and srkd loads only tensors")
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small EDSR-T teacher (a pair distil covers for a SqueezeSR student): good, reshaped, partial."""
    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    good = save_checkpoint(root / "t.safetensors", build_model("edsr-t", 2, modules_per_block=1), "edsr-t",
                           {"modules_per_block": 1})
    sd = load_file(str(good))
    torch.save({**sd, "body_conv.weight": torch.zeros(64, 64, 1, 1)}, root / "shape.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("tail.")}, root / "missing.pth")
    return good, {
        "shape.pth": (root / "shape.pth", "body_conv.weight has shape [64, 64, 1, 1], the model needs [64, 64, 3, 3]"),
        "missing.pth": (root / "missing.pth", "4 missing keys: tail.0.weight, tail.0.bias, tail.2.weight and 1 more"),
    }


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


NAMES = ["shape.safetensors", "shape.pth", "missing.safetensors", "missing.pth", "alien.pth", "evil.pth"]


@pytest.mark.parametrize("name", NAMES)
def test_upscale_weights(run_cli, bad, set5, tmp_path, name):
    path, words = bad[name]
    err = _one_line(*run_cli("upscale", set5 / "LR_bicubic" / "X2" / "babyx2.png", "-o", tmp_path / "o.png",
                             "--weights", path, "--device", "cpu")[::2])
    assert err.startswith(f"error: {path}: ") and words in err
    assert not (tmp_path / "o.png").exists()
    assert not (path.parent / "pwned").exists()


@pytest.mark.parametrize("name", NAMES)
def test_eval_weights(run_cli, bad, set5, name):
    path, words = bad[name]
    err = _one_line(*run_cli("eval", "--weights", path, "--scale", "2", "--data", set5, "--device", "cpu")[::2])
    assert str(path) in err and words in err


@pytest.mark.parametrize("name", ["shape.pth", "missing.pth"])
def test_distill_teacher(run_cli, teacher, set5, tmp_path, name):
    path, words = teacher[1][name]
    err = _one_line(*run_cli("distill", "--teacher", path, "--student", "squeezesr", "--scale", "2",
                             "--data", set5 / "HR", "--out", tmp_path / "run", "--steps", "1", "--device", "cpu")[::2])
    assert f"--teacher {path}: does not fit edsr-t x2: {words}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", NAMES)
def test_train_and_distill_init(run_cli, bad, teacher, set5, tmp_path, name):
    path, words = bad[name]
    common = ["--data", set5 / "HR", "--out", tmp_path / "run", "--steps", "1", "--device", "cpu", "--init", path]
    err = _one_line(*run_cli("train", "--arch", "squeezesr", "--scale", "2", *common)[::2])
    assert err.startswith(f"error: --init {path}: ") and words in err
    err = _one_line(*run_cli("distill", "--teacher", teacher[0], "--student", "squeezesr", "--scale", "2", *common)[::2])
    assert err.startswith(f"error: --init {path}: ") and words in err
    assert not (tmp_path / "run").exists()


def test_messages_in_full(bad):
    """The exact lines a user sees (the issue's two reports and the refused pickle)."""
    for name, tail in [
        ("shape.pth", f"does not fit squeezesr x2: {SHAPE}"),
        ("missing.pth", f"does not fit squeezesr: {MISSING}"),  # no tail: its scale is unknown, the keys are not
        ("missing.safetensors", f"does not fit squeezesr x2: {MISSING}"),
        ("evil.pth", "refused to unpickle: it calls posix.system, and srkd loads only tensors"),
    ]:
        path = bad[name][0]
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(e.value) == f"{path}: {tail}"


def test_plain_pickle_is_refused_in_one_line(tmp_path):
    """A pickle not written by torch.save: torch's weights-only loader stops at its first opcode, unread."""
    p = tmp_path / "evil.pkl"
    with open(p, "wb") as f:
        pickle.dump(_RunsCode(tmp_path / "pwned"), f, protocol=4)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: not a checkpoint srkd can read (weights-only unpickling failed: ")
    assert "\n" not in msg and len(msg) < 250 and msg.endswith(")") and "torch." not in msg
    assert not (tmp_path / "pwned").exists()


def test_odd_scales_are_named(tmp_path):
    sd = load_file(str(BUNDLED))
    odd = tmp_path / "odd.pth"
    torch.save({**sd, "tail.0.weight": torch.zeros(5, 64, 3, 3), "tail.0.bias": torch.zeros(5)}, odd)
    with pytest.raises(CheckpointError, match=r"does not fit squeezesr at any scale \(closest x2\): tail.0.weight has "
                                              r"shape \[5, 64, 3, 3\], the model needs \[12, 64, 3, 3\] \(and 1 more"):
        load_checkpoint(odd)
    x5 = tmp_path / "x5.pth"
    torch.save({**sd, "tail.0.weight": torch.zeros(75, 64, 3, 3), "tail.0.bias": torch.zeros(75)}, x5)
    with pytest.raises(CheckpointError, match="this squeezesr checkpoint upscales x5; srkd runs x2, x3 or x4"):
        load_checkpoint(x5)


SMALL = {"edsr-t": {"modules_per_block": 1, "n_feats": 16}, "imdn": {"blocks": 2, "n_feats": 16}, "carn-m": {"n_feats": 16},
         "squeezesr": {"n_feats": 16, "squeeze": 4, "expand1x1": 8}, "swinir": {"blocks": 1, "depth": 2, "embed_dim": 12},
         "bsrn": {"n_feats": 16, "blocks": 2}, "esrgan": {"n_feats": 8, "blocks": 1, "growth": 4},
         "compact": {"n_feats": 8, "convs": 2}}  # small: every tensor is dropped in turn


@pytest.mark.parametrize("arch", list(ARCHS))
def test_detection_survives_any_missing_key(arch, tmp_path):
    """Drop each tensor in turn: detection never raises, and loading names the missing key."""
    spec = ARCHS[arch]
    cfg = {k: v for k, v in SMALL.get(arch, {}).items() if k in spec.defaults}
    sd = build_model(arch, 2, **cfg).state_dict()
    path = tmp_path / "w.safetensors"
    for key in sd:
        partial = {k: v.contiguous() for k, v in sd.items() if k != key}
        try:
            detect_arch(partial)
        except CheckpointError:
            pass  # a detect function reading a key blindly is still one clear line
        save_file(partial, str(path))  # no metadata: the architecture comes from detection
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert "\n" not in msg and (key in msg or "unknown architecture" in msg or "and 1 more" in msg), (key, msg)
