"""`srkd distill --teacher`: decided once (`Zoo.identify`), loaded once, hashed once; the sha256 in the
provenance is the file's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srkd_cli import zoo as zoo_mod
from srkd_cli.archs import build_model, get_arch
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.errors import ModelNotFoundError
from srkd_cli.training import TrainConfig, train
from srkd_cli.zoo import Zoo, cache as zoo_cache, hubid, sha256_file

SET5_HR = Path(__file__).parent / "data" / "Set5" / "HR"
TINY_EDSR = dict(n_feats=8, modules_per_block=1)


@pytest.fixture
def teacher(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "bundled" / "t.safetensors", build_model("edsr-t", 2, **TINY_EDSR), "edsr-t",
                           get_arch("edsr-t").config(**TINY_EDSR))


@pytest.fixture
def hashed(monkeypatch):
    """Every sha256_file call, by path, under each name srkd reaches it by."""
    calls = []
    real = zoo_cache.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    for module in (zoo_mod, zoo_cache, hubid):
        monkeypatch.setattr(module, "sha256_file", counting)
    return calls


def _distill(tmp_path: Path, teacher: str):
    return train(TrainConfig(arch="squeezesr", scale=2, data=[SET5_HR], out=tmp_path / "run", teacher=teacher,
                             arch_config=dict(n_feats=8, squeeze=4, expand1x1=4), steps=1, batch=2, patch=8,
                             device="cpu", threads=1, quiet=True, ckpt_every=0, val_every=0))


def _provenance(run) -> dict:
    return json.loads(load_checkpoint(run.final).metadata["provenance"])


def test_a_teacher_file_is_hashed_once_and_recorded(tmp_path, teacher, hashed):
    want = sha256_file(teacher)
    hashed.clear()
    run = _distill(tmp_path, str(teacher))
    assert hashed.count(teacher) == 1
    prov = _provenance(run)
    assert prov["teacher"] == str(teacher) and prov["teacher_sha256"] == want


def test_a_zoo_teacher_is_hashed_once_by_its_check_and_recorded(tmp_path, teacher, hashed, monkeypatch):
    want = sha256_file(teacher)
    (tmp_path / "weights.toml").write_text(
        '[models."t-x2"]\narch = "edsr-t"\nscale = 2\nconfig = { n_feats = 8, modules_per_block = 1 }\n'
        f'sources = [{{ kind = "bundled", file = "t.safetensors", sha256 = "{want}" }}]\n')
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: Zoo.from_file(tmp_path / "weights.toml", bundled_dir=teacher.parent))
    hashed.clear()
    run = _distill(tmp_path, "t")  # a family name, at --scale 2
    assert hashed == [teacher]  # the zoo's checksum check; the provenance reuses it
    prov = _provenance(run)
    assert prov["teacher"] == "t-x2" and prov["teacher_sha256"] == want


def test_a_missing_teacher_file_is_one_line_naming_the_option(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        _distill(tmp_path, "nope/t.safetensors")
    assert str(err.value) == "--teacher nope/t.safetensors: no such file (and no model of that name in the zoo)"


def test_the_bundled_edsr_t_teaches_offline(tmp_path, monkeypatch, run_cli):
    """Issue 30: `srkd distill --teacher edsr-t-x2` needs no network: the bundled file, checked against
    weights.toml, teaches paper 1's recipe (S1..S3 <-> T1..T3), and the run records which file it was."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SRKD_CACHE", str(tmp_path / "empty-cache"))
    entry = zoo_mod.get_zoo().get("edsr-t-x2")
    code, _, err = run_cli("distill", "--teacher", "edsr-t-x2", "--student", "squeezesr", "--scale", "2",
                           "--data", SET5_HR, "--out", tmp_path / "run", "--steps", "1", "--batch", "2", "--patch", "8",
                           "--device", "cpu", "--threads", "1", "-q", "--ckpt-every", "0", "--val-every", "0")
    assert code == 0, err
    prov = json.loads(load_checkpoint(tmp_path / "run" / "final.safetensors").metadata["provenance"])
    assert prov["teacher"] == "edsr-t-x2" and prov["teacher_sha256"] == entry.sources[0].sha256
    assert prov["recipe"] == "paper1-feature-kd" and prov["pairs"] == [["S1", "T1"], ["S2", "T2"], ["S3", "T3"]]
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.safetensors"))
