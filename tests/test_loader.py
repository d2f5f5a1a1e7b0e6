"""`load_model`: a zoo entry's file must be the model the entry describes."""

from __future__ import annotations

import pytest
import torch

from srkd_cli import loader
from srkd_cli import zoo as zoo_mod
from srkd_cli.archs import build_model
from srkd_cli.checkpoint import save_checkpoint
from srkd_cli.errors import CheckpointError
from srkd_cli.zoo import Zoo, sha256_file


def _zoo(tmp_path, arch: str, config: str) -> Zoo:
    model = build_model("squeezesr", 2, blocks=2)
    weights = save_checkpoint(tmp_path / "bundled" / "m.safetensors", model, "squeezesr", {"blocks": 2})
    (tmp_path / "weights.toml").write_text(
        f'[models."m-x2"]\narch = "{arch}"\nscale = 2\nconfig = {config}\n'
        f'sources = [{{ kind = "bundled", file = "m.safetensors", sha256 = "{sha256_file(weights)}" }}]\n')
    return Zoo.from_file(tmp_path / "weights.toml", bundled_dir=tmp_path / "bundled")


def test_entry_and_file_agree(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: _zoo(tmp_path, "squeezesr", "{ blocks = 2 }"))
    lm = loader.load_model("m-x2")
    assert lm.config["blocks"] == 2 and lm.metadata["zoo_name"] == "m-x2"


@pytest.mark.parametrize("arch,config,words", [
    ("squeezesr", "{ blocks = 3 }", "zoo entry m-x2 says blocks=3, the file has blocks=2"),
    ("edsr-t", "{}", "zoo entry m-x2 says arch=edsr-t, the file holds arch=squeezesr"),
])
def test_entry_and_file_disagree(tmp_path, monkeypatch, arch, config, words):
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: _zoo(tmp_path, arch, config))
    with pytest.raises(CheckpointError, match=words):
        loader.load_model("m-x2")


def test_load_model_gives_the_entry_and_hashes_the_file_once(tmp_path, monkeypatch):
    """The entry and the sha256 travel on the LoadedModel, so no caller decides or hashes again."""
    from pathlib import Path

    from srkd_cli.zoo import cache as zoo_cache

    z = _zoo(tmp_path, "squeezesr", "{ blocks = 2 }")
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: z)
    file = tmp_path / "bundled" / "m.safetensors"
    want = sha256_file(file)
    calls = []

    def counting(path):
        calls.append(Path(path))
        return want

    monkeypatch.setattr(zoo_mod, "sha256_file", counting)  # the zoo's check of a verified entry
    monkeypatch.setattr(zoo_cache, "sha256_file", counting)  # LoadedModel.sha256
    lm = loader.load_model("m", scale=2)  # a family at a scale
    assert lm.entry is z.entries["m-x2"] and lm.path == file
    assert lm.sha256 == want and lm.sha256 == want and calls == [file]  # the check's hash, not a second one
    calls.clear()
    lm = loader.load_model(str(file), scale=2)
    assert lm.entry is None and calls == []  # a file is hashed only when asked
    assert lm.sha256 == want and lm.sha256 == want and calls == [file]
    lm = loader.load_model(weights=file)
    assert lm.entry is None and lm.sha256 == want
