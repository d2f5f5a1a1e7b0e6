"""`srkd export` and the onnxruntime backend: exported models reproduce PyTorch to 1e-4 at sizes
they were not traced at, for every architecture."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from srkd_cli.archs import build_model, get_arch
from srkd_cli.archs.squeezesr_fused import reparameterize
from srkd_cli.checkpoint import save_checkpoint
from srkd_cli.errors import ConfigError, OutputError
from srkd_cli.export import export_model
from srkd_cli.inference import Upscaler
from srkd_cli.runtime.graph import trace_example
from srkd_cli.runtime.ort import OnnxModel

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    HAVE_ORT = True
except ImportError:
    HAVE_ORT = False
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason='onnx/onnxruntime not installed (pip install "srkd[onnx]")')

SMALL = {"edsr-t": {"modules_per_block": 1, "n_feats": 32}, "squeezesr": {}, "swinir": {"blocks": 1, "depth": 2, "embed_dim": 24, "num_heads": 2}}


def model_for(arch: str, scale: int):
    torch.manual_seed(0)
    m = build_model(arch, scale, **SMALL[arch]).eval()
    with torch.no_grad():  # a nudge away from the init, so biases and tables are not all zero
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def fresh_inputs(model):
    ws = getattr(model, "window_size", 8)
    g = torch.Generator().manual_seed(5)
    # A batch of 3, one size a multiple of the window and one not, neither the traced size.
    return [torch.rand(3, 3, 2 * ws + 1, 5 * ws, generator=g), torch.rand(1, 3, 4 * ws, 3 * ws - 3, generator=g)]


def assert_reproduces(model, run):
    with torch.no_grad():
        for x in fresh_inputs(model):
            assert x.shape[2:] != trace_example(model).shape[2:]
            ref = model(x)
            got = run(x)
            assert got.shape == ref.shape
            assert (got - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch,scale", [("squeezesr", 3), ("edsr-t", 2), ("swinir", 2)])
def test_torchscript_export_matches_pytorch(tmp_path, arch, scale):
    model = model_for(arch, scale)
    out = tmp_path / "m.pt"
    r = export_model(model, out, "torchscript", meta={"arch": arch})
    assert r.max_abs_diff < 1e-4 and out.is_file() and r.scale == scale
    extra = {"srkd.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["srkd.json"])["scale"] == scale
    assert_reproduces(model, loaded)


@needs_ort
@pytest.mark.parametrize("arch,scale", [("squeezesr", 4), ("edsr-t", 3), ("swinir", 2)])
def test_onnx_export_matches_pytorch_with_dynamic_shapes(tmp_path, arch, scale):
    import onnx

    model = model_for(arch, scale)
    out = tmp_path / "m.onnx"
    r = export_model(model, out, "onnx", meta={"arch": arch})
    assert r.max_abs_diff < 1e-4
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and dims[1] == ""  # N, H, W symbolic; C fixed
    ort_model = OnnxModel(out)
    assert ort_model.scale == scale and ort_model.metadata["arch"] == arch
    assert_reproduces(model, ort_model)


@needs_ort
def test_onnx_backend_drives_the_upscaler_like_torch():
    model = model_for("swinir", 2)
    spec, cfg = get_arch("swinir"), get_arch("swinir").config(**SMALL["swinir"])
    x = torch.rand(1, 3, 75, 58)
    ref = Upscaler(model, spec, cfg, "cpu", tile=None)(x)
    onnx_model = OnnxModel.from_torch(model)
    assert (Upscaler(onnx_model, spec, cfg, "cpu", tile=None)(x) - ref).abs().max() < 1e-4
    tiled = Upscaler(onnx_model, spec, cfg, "cpu", tile=40, overlap=8)(x)  # tiles of varying sizes
    assert (tiled - Upscaler(model, spec, cfg, "cpu", tile=40, overlap=8)(x)).abs().max() < 1e-4
    gray = Upscaler(onnx_model, spec, cfg, "cpu", tile=None)(x[:, :1])
    assert gray.shape == (1, 1, 150, 116)


def test_missing_onnxruntime_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r"needs onnxruntime, which is not installed.*pip install onnxruntime"):
        OnnxModel(b"not used")


@needs_ort
def test_cli_export_writes_atomically_and_refuses_to_overwrite(tmp_path, run_cli):
    model = model_for("squeezesr", 2)
    ckpt = save_checkpoint(tmp_path / "sq.safetensors", model, "squeezesr", {})
    out = tmp_path / "out" / "sq.onnx"
    code, stdout, err = run_cli("export", ckpt, "--format", "onnx", "-o", out)
    assert code == 0, err
    assert "max difference from PyTorch" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["sq.onnx"]  # no temporary left behind
    assert_reproduces(model, OnnxModel(out))
    code, _, err = run_cli("export", ckpt, "--format", "onnx", "-o", out)
    assert code == 2 and "exists" in err
    code, _, err = run_cli("export", ckpt, "--format", "onnx", "-o", out, "--overwrite", "--fuse")
    assert code == 0, err
    assert OnnxModel(out).metadata["fused"] is True
    assert_reproduces(model, OnnxModel(out))
    code, _, err = run_cli("export", ckpt, "--format", "tflite", "-o", tmp_path / "x")
    assert code == 2 and "--format tflite" in err
    code, _, err = run_cli("export", ckpt, "--format", "torchscript", "-o", tmp_path)
    assert code == 2 and "is a folder" in err


def test_export_of_the_fused_model_matches_the_original(tmp_path):
    model = model_for("squeezesr", 3)
    r = export_model(reparameterize(model), tmp_path / "f.pt", "torchscript")
    assert_reproduces(model, torch.jit.load(str(r.path)))


def test_export_refuses_a_broken_export(tmp_path, monkeypatch):
    from srkd_cli import export as export_mod

    model = model_for("squeezesr", 2)
    real = export_mod.torchscript_module
    monkeypatch.setattr(export_mod, "torchscript_module", lambda m: real(build_model("squeezesr", 2).eval()))
    with pytest.raises(OutputError, match="differs from PyTorch"):
        export_model(model, tmp_path / "bad.pt", "torchscript")
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("backend", ["torch-opt", "torchscript", "onnxruntime"])
def test_every_backend_computes_the_same_function(backend, monkeypatch):
    from srkd_cli.backends import prepare
    from srkd_cli.runtime import allocator
    from srkd_cli.runtime.tiles import HaloTiles

    monkeypatch.setattr(allocator, "_TUNED", False)  # an earlier in-process `srkd upscale` may have tuned it

    if backend == "onnxruntime" and not HAVE_ORT:
        pytest.skip('onnxruntime not installed (pip install "srkd[onnx]")')
    for arch in ("squeezesr", "swinir") if backend == "onnxruntime" else ("squeezesr",):
        model = model_for(arch, 2)
        x = torch.rand(1, 3, 300 if arch == "squeezesr" else 40, 37)
        runner = prepare(model, backend, "cpu", example=x, threads=2)
        assert runner.scale == 2
        with torch.inference_mode():
            ref = model(x)
            assert (runner(x) - ref).abs().max().item() < 1e-4
        if arch == "squeezesr" and backend != "torchscript":
            # SqueezeSR runs in exact halo pieces of at most 128 (torch-opt) or 144 (onnxruntime) rows, evened out
            assert isinstance(runner, HaloTiles)
            assert [p[2] - p[0] for p in runner.pieces(300, 37)] == [100, 100, 100]
            assert runner.workers == (2 if backend == "onnxruntime" else 1)
        if arch == "squeezesr" and backend == "onnxruntime":
            # one thread: the whole image on one session, its column-paired tail shuffled by OnnxModel
            whole = prepare(model, backend, "cpu", threads=1)
            assert not isinstance(whole, HaloTiles) and whole.column_pairs == 2
            with torch.inference_mode():
                assert (whole(x) - ref).abs().max().item() < 1e-4


def test_tune_cpu_allocator_keeps_results_identical(monkeypatch):
    from srkd_cli.backends import optimize
    from srkd_cli.runtime import allocator
    from srkd_cli.runtime.allocator import tune_cpu_allocator
    from srkd_cli.runtime.tiles import HaloTiles

    monkeypatch.setattr(allocator, "_TUNED", False)  # restored afterwards: later tests expect tiles

    model = model_for("squeezesr", 2)
    x = torch.rand(1, 3, 40, 30)
    with torch.inference_mode():
        before = model(x)
        tuned = tune_cpu_allocator()
        assert tuned == (sys.platform.startswith("linux") and _is_glibc())
        assert torch.equal(model(x), before)
    assert isinstance(optimize(model), HaloTiles) != tuned  # tuned: whole images


def _is_glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


@needs_ort
def test_conv_net_exports_carry_symbolic_shapes_so_adds_fold_into_convs(tmp_path):
    import onnx
    import onnxruntime as ort

    from srkd_cli.archs.squeezesr_fused import Subpixel, split_stream
    from srkd_cli.runtime.graph import onnx_bytes
    from srkd_cli.runtime.onnx_shapes import conv_net_shapes

    graph = Subpixel(split_stream(model_for("squeezesr", 2), pair_columns=None))
    plain = onnx.load_from_string(onnx_bytes(graph, symbolic_shapes=False))
    assert conv_net_shapes(plain.graph) is not None  # annotated directly, without sympy
    shaped = onnx.load_from_string(onnx_bytes(graph))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in shaped.graph.value_info}
    # every tensor but the column-paired tail's (stride 2 across, padding 2: width // 2 + 1) keeps the input's size
    assert dims and all(d[2:] == ["height", "width"] or (d[1] == 24 and d[2:] == ["height", "width//2+1"]) for d in dims.values())
    assert [d.dim_param or d.dim_value for d in shaped.graph.output[0].type.tensor_type.shape.dim] == ["batch", 24, "height", "width//2+1"]
    adds = {}
    for name, proto in (("without", plain), ("with", shaped)):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        adds[name] = sum(n.op_type == "Add" for n in onnx.load(so.optimized_model_filepath).graph.node)
    # 12 Adds in the graph; with shapes, all but the 4 `x + ReLU(conv)` fold into convolutions
    assert adds["with"] == 4 < adds["without"]
    full = onnx.load_from_string(onnx_bytes(build_model("squeezesr", 3).eval()))
    assert [d.dim_param or d.dim_value for d in full.graph.output[0].type.tensor_type.shape.dim] == ["batch", 3, "height*3", "width*3"]
