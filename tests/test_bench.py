"""`srkd bench`: record fields and their consistency, counted MACs, model resolution, the fused
SqueezeSR. No assertion is about how fast anything is."""

from __future__ import annotations

import json
import math

import pytest
import torch

from srkd_cli import bench
from srkd_cli.archs import build_model
from srkd_cli.archs.squeezesr_fused import FusedSqueezeSR, Subpixel, receptive_radius, reparameterize, split_stream
from srkd_cli.backends import optimize
from srkd_cli.checkpoint import save_checkpoint
from srkd_cli.errors import ConfigError, ModelNotFoundError
from srkd_cli.runtime.tiles import HaloTiles
from srkd_cli.zoo import Zoo


def squeezesr_macs_per_lr_pixel(n_feats=64, blocks=3, squeeze=16, expand1x1=32, scale=2) -> int:
    """From the layer shapes of SPEC §1: MACs of each conv per LR pixel = in * out * k * k."""
    head = 3 * n_feats * 3 * 3
    block = n_feats * squeeze * 1 * 1 + squeeze * expand1x1 * 1 * 1 + squeeze * (n_feats - expand1x1) * 3 * 3
    tail = n_feats * (3 * scale * scale) * 3 * 3
    return head + blocks * block + tail


def test_squeezesr_mac_count_matches_layer_shapes():
    assert squeezesr_macs_per_lr_pixel() == 27072
    for scale in (2, 3, 4):
        model = build_model("squeezesr", scale)
        got = bench.count_macs(model, (40, 24), scale)
        assert got == squeezesr_macs_per_lr_pixel(scale=scale) / scale**2
    assert bench.count_macs(build_model("squeezesr", 2, blocks=5, squeeze=8), (16, 16), 2) == \
        squeezesr_macs_per_lr_pixel(blocks=5, squeeze=8) / 4


def test_swinir_mac_count_includes_attention_matmuls():
    # Per LR token of one Swin layer (dim 60, window 8 -> 64 keys, mlp 120): qkv, proj, mlp, q@k, attn@v.
    dim, n = 60, 64
    layer = dim * 3 * dim + dim * dim + 2 * dim * 2 * dim + n * dim + n * dim
    conv = dim * dim * 9
    per_lr = 3 * dim * 9 + 6 * layer + conv + conv + dim * 12 * 9  # conv_first, 6 layers, RSTB conv, body conv, tail
    model = build_model("swinir", 2, blocks=1)
    assert bench.count_macs(model, (32, 16), 2) == per_lr / 4


@pytest.fixture(scope="module")
def records():
    return bench.run_bench([("sq", build_model("squeezesr", 2))], size=(40, 24), scale=2, repeat=3, warmup=1,
                           backends=("torch", "torch-opt"), memory=False)


def test_records_have_exactly_the_documented_keys_and_rows(records):
    assert all(tuple(r) == bench.RECORD_KEYS for r in records)
    names = [(r["model"], r["backend"]) for r in records]
    assert names[:2] == [("sq", "torch"), ("sq", "torch-opt")]
    assert [n for n, _ in names[2:]] == list(bench.BICUBIC_ROWS)
    json.dumps(list(records))  # plain JSON types only


def test_record_values_are_consistent(records):
    rate = records.conv_macs_per_s
    assert rate > 1e7  # any CPU does more than 10 MMAC/s
    for r in records:
        assert r["scale"] == 2 and r["size"] == "40x24" and r["device"] == "cpu"
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert math.isclose(r["mp_per_s"], 80 * 48 / 1e6 / r["median_s"])
        assert r["peak_mem_mb"] is None  # memory=False
    by = {(r["model"], r["backend"]): r for r in records}
    opencv = by[("bicubic-opencv", "opencv")]
    assert opencv["ratio_to_opencv"] == 1.0 and opencv["floor_s"] is None and opencv["params"] == 0
    model = by[("sq", "torch")]
    assert model["params"] == 27_388 and model["macs_per_pixel"] == 6768
    assert math.isclose(model["ratio_to_opencv"], model["median_s"] / opencv["median_s"])
    assert math.isclose(model["floor_s"], 6768 * 80 * 48 / rate)
    assert math.isclose(model["floor_ratio"], model["median_s"] / model["floor_s"])
    # Both backends of one model report the original model's counts.
    assert by[("sq", "torch-opt")]["macs_per_pixel"] == 6768


def test_cpu_peak_memory_is_measured_in_a_child(tmp_path):
    model_file = tmp_path / "m.pt"
    torch.save(build_model("squeezesr", 2).eval(), model_file)
    recipe = {"kind": "model", "model_file": str(model_file), "backend": "torch", "size": [96, 64], "scale": 2, "threads": 1}
    peak, why = bench._memory_child(recipe)
    # The 64-channel activations alone are 64*96*64*4 bytes = 1.5 MB each, and several are alive.
    assert peak is not None and 1.5 < peak < 500, why
    assert bench._memory_child(dict(recipe, kind="bicubic-opencv"))[0] is not None


def test_resolve_model_names(tmp_path, monkeypatch):
    m = build_model("squeezesr", 3)
    save_checkpoint(tmp_path / "weights" / "sq.safetensors", m, "squeezesr", {})
    toml = tmp_path / "weights.toml"
    toml.write_text(
        '[models."sq-x3"]\narch = "squeezesr"\nscale = 3\nsources = [{ kind = "bundled", file = "sq.safetensors" }]\n'
        '[models."tiny-x2"]\narch = "swinir"\nscale = 2\nconfig = { blocks = 1, depth = 2 }\n'
        'sources = [{ kind = "url", url = "http://127.0.0.1:9/tiny.pth" }]\n'
    )
    monkeypatch.setenv("SRKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("srkd_cli.zoo.get_zoo", lambda: Zoo.from_file(toml))
    got = bench.resolve_model("sq", 3)  # family name + scale, bundled file present
    assert (got.label, got.trained) == ("sq-x3", True)
    assert torch.equal(got.model.head.weight, m.head.weight)
    got = bench.resolve_model("tiny-x2", 2)  # not cached: same architecture, untrained, never downloaded
    assert got.label == "tiny-x2 (untrained)" and not got.trained and len(got.model.layers) == 1
    got = bench.resolve_model("swinir:blocks=2,depth=2", 2)
    assert got.label.endswith("(untrained)") and len(got.model.layers) == 2
    got = bench.resolve_model(str(tmp_path / "weights" / "sq.safetensors"), 3)
    assert (got.label, got.trained) == ("sq.safetensors", True)
    with pytest.raises(ModelNotFoundError, match="--model nosuch"):
        bench.resolve_model("nosuch", 2)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        bench.resolve_model("swinir:blocks", 2)
    with pytest.raises(ConfigError, match="has no option"):
        bench.resolve_model("squeezesr:depth=3", 2)


def test_parse_size():
    assert bench.parse_size("512x384") == (512, 384)
    assert bench.parse_size("64") == (64, 64)
    for bad in ("axb", "0x10", "10x"):
        with pytest.raises(ConfigError, match="--size"):
            bench.parse_size(bad)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fused_and_split_squeezesr_equal_unfused(scale):
    torch.manual_seed(scale)
    model = build_model("squeezesr", scale).eval()
    with torch.no_grad():  # trained-like weights: make the expands and biases non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize(model)
        assert isinstance(fused, FusedSqueezeSR) and fused.scale == scale
        assert sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules()) == 2 + 2 * 3  # 3 blocks of 2 convs
        assert (fused(x) - ref).abs().max() < 1e-5
        # channels_last, and cache tiles with the receptive-field halo, change nothing
        tiled = HaloTiles(reparameterize(model, channels_last=True), scale, receptive_radius(model), (16, 12))
        assert len(tiled.pieces(37, 29)) == 9
        assert (tiled(x) - ref).abs().max() < 1e-5
        assert (optimize(model, "cpu")(x) - ref).abs().max() < 1e-5
        split = split_stream(model, pair_columns=None)  # as the onnxruntime backend makes it (squeezesr_fused.for_graph_runtime)
        assert (split(x) - ref).abs().max() < 1e-5 and receptive_radius(split) == receptive_radius(model) == 5
        sub = Subpixel(split)
        # x2's 12-channel tail computes column pairs (24 channels, width // 2 + 1); x3/x4 do not
        pairs = 2 if scale == 2 else 1
        assert split.column_pairs == sub.export_metadata["column_pairs"] == pairs
        assert sub(x).shape == ((2, 24, 37, 15) if pairs == 2 else (2, 3 * scale * scale, 37, 29))
        assert split.subpixel(x).shape == (2, 3 * scale * scale, 37, 29)
        unpaired = split_stream(model)  # the default: a whole-image graph gains nothing from pairs
        assert unpaired.column_pairs == 1 and (unpaired(x) - ref).abs().max() < 1e-5
        assert (split_stream(model, pair_columns=True)(x) - ref).abs().max() < 1e-5  # pairs work at any scale

        class SubpixelRunner:  # a runtime that leaves the pixel shuffle to HaloTiles' copy (as OnnxModel can)
            subpixel_output, column_pairs = True, pairs

            def run_raw(self, t):
                return sub(t)

            def run_subpixel(self, t):
                return split.subpixel(t)

        pieces = HaloTiles(SubpixelRunner(), scale, receptive_radius(model), (16, 12), workers=2)
        assert (pieces(x) - ref).abs().max() < 1e-5
        # pieces of odd and even widths at odd and even offsets: pairs split at either end of a piece
        for tile in ((5, 3), (4, 1), (3, 2), (37, 28)):
            assert (HaloTiles(SubpixelRunner(), scale, 5, tile, workers=2)(x) - ref).abs().max() < 1e-5
        # as even as the bounds allow (no 1-row remainder paying a whole halo), covering every pixel once
        spans = pieces.pieces(37, 29)
        assert sorted({(y1 - y0, x1 - x0) for y0, x0, y1, x1 in spans}) == [(11, 9), (11, 10), (13, 9), (13, 10)]
        cover = torch.zeros(37, 29)
        for y0, x0, y1, x1 in spans:
            cover[y0:y1, x0:x1] += 1
        assert bool((cover == 1).all())
    with torch.inference_mode():
        assert (tiled(x) - ref).abs().max() < 1e-5  # the in-place path
    # autograd still works through the fused model (no in-place ops there)
    fused(x).mean().backward()
    assert reparameterize(build_model("edsr-t", 2, modules_per_block=1)).__class__.__name__ == "EDSRT"


def test_cli_bench_prints_a_table_and_writes_json(run_cli, tmp_path):
    out = tmp_path / "b.json"
    code, stdout, err = run_cli("bench", "--model", "squeezesr", "--size", "32x24", "--repeat", "2", "--warmup", "1",
                                "--no-memory", "--json", out, "--threads", "1", "-q")
    assert code == 0, err
    for text in ("bicubic-opencv", "bicubic-pillow", "bicubic-torch", "squeezesr", "x opencv", "GMAC/s"):
        assert text in stdout
    recs = json.loads(out.read_text())
    assert [r["model"] for r in recs][1:] == list(bench.BICUBIC_ROWS) and recs[0]["size"] == "32x24"
    code, _, err = run_cli("bench", "--size", "big", "-q")
    assert code == 2 and "--size big" in err
    code, _, err = run_cli("bench", "--backend", "tensorrt", "--size", "16x16", "-q")
    assert code == 2 and "--backend tensorrt" in err
