"""Issue 33, part A: outputs never overwrite inputs, batches leave their own outputs alone, and odd
arguments get one line. Every test runs `srkd` as a real subprocess on real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from srkd_cli import __version__
from srkd_cli.archs import ARCHS, get_arch, halo_radius
from srkd_cli.checkpoint import save_checkpoint
from srkd_cli.config import DEFAULT_MODELS
from test_upscale import TINY, nearest_squeezesr

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(33)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


def srkd(home: Path, *args, cwd=None, stdout=subprocess.PIPE, **env) -> subprocess.CompletedProcess:
    """`python -m srkd_cli ARGS` in a child process: (returncode, stdout, stderr) as text."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SRKD_HOME=str(home / "home"),
               SRKD_CACHE=str(home / "cache"), **env)
    return subprocess.run([sys.executable, "-m", "srkd_cli", *map(str, args)], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=600)


def one_error(run: subprocess.CompletedProcess, *says: str) -> str:
    """A failure reported as one `error:` line holding each of `says`, with no traceback."""
    assert run.returncode != 0, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, run.stderr
    for text in says:
        assert text in lines[0], (text, run.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """x2 nearest-neighbour SqueezeSR weights: exact, and quick on the torch backend."""
    path = tmp_path_factory.mktemp("w") / "nearest_x2.safetensors"
    save_checkpoint(path, nearest_squeezesr(2), "squeezesr", get_arch("squeezesr").config(**TINY))
    return path


def image(path: Path, h: int = 12, w: int = 14, mode: str = "RGB") -> Path:
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = RNG.integers(0, 256, (h, w, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr[:, :, 0] if channels == 1 else arr, mode).save(path)
    return path


# ---------------------------------------------------------------- High 1: --json report files


def test_upscale_json_never_replaces_an_input_an_output_or_an_existing_file(tmp_path, home, weights):
    a = image(tmp_path / "a.png")
    before = a.read_bytes()
    up = ("upscale", "-w", weights, "--backend", "torch")
    run = srkd(home, *up, a, "-o", tmp_path / "out.png", "--json", a, "--overwrite")
    one_error(run, "--json", "is an input")
    assert a.read_bytes() == before and not (tmp_path / "out.png").exists()  # refused before any work
    run = srkd(home, *up, a, "-o", tmp_path / "out2/", "--json", tmp_path / "out2" / "a_x2.png", "--overwrite")
    one_error(run, "--json", "is an output of this run")
    assert not (tmp_path / "out2").exists()
    run = srkd(home, *up, a, "-o", tmp_path / "out3/", "--json", f"{tmp_path}/rep/")  # a folder: said up front
    one_error(run, "--json", "is a folder")
    assert not (tmp_path / "out3").exists() and not (tmp_path / "rep").exists()
    report = tmp_path / "r.json"
    report.write_text("keep")
    run = srkd(home, *up, a, "-o", tmp_path / "out4/", "--json", report)
    one_error(run, "--json", "already exists (use --overwrite")
    assert report.read_text() == "keep" and not (tmp_path / "out4").exists()
    run = srkd(home, *up, a, "-o", tmp_path / "out4/", "--json", report, "--overwrite", "-q")
    assert run.returncode == 0, run.stderr
    (rec,) = json.loads(report.read_text())
    assert rec["ok"] and rec["output"].endswith("a_x2.png")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_bench_json_is_checked_before_timing_and_the_default_model_is_upscales(tmp_path, home, weights):
    a = image(tmp_path / "a.png")
    before = a.read_bytes()
    run = srkd(home, "bench", "--json", a, "--size", "16x16", "-q")
    one_error(run, "--json", "already exists")
    run = srkd(home, "bench", "-m", weights, "--json", weights, "--overwrite", "--size", "16x16", "-q")
    one_error(run, "--json", "is an input")
    assert a.read_bytes() == before
    out = tmp_path / "b.json"
    run = srkd(home, "bench", "--size", "16x16", "--repeat", "1", "--warmup", "0", "--no-memory", "--threads", "1",
               "-b", "torch", "--json", out, "-q")
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())[0]["model"] == DEFAULT_MODELS[2]  # no -m: what `srkd upscale` runs


# ---------------------------------------------------------------- High 1 and 2, Medium 6: srkd eval


def test_eval_never_writes_over_an_input_or_ground_truth(tmp_path, home, weights):
    data = tmp_path / "set"
    hr = image(data / "HR" / "hr.png", 24, 24)
    truth = hr.read_bytes()
    named_hr = tmp_path / "HR.safetensors"  # the model's name, HR, comes from the weights file's name
    named_hr.write_bytes(weights.read_bytes())
    run = srkd(home, "eval", "-d", data, "-w", named_hr, "-s", "2", "--backend", "torch", "--save-images", tmp_path)
    one_error(run, "--save-images", "an input of this run")
    run = srkd(home, "eval", "-d", data, "-m", "bicubic", "-s", "2", "--json", hr, "--overwrite")
    one_error(run, "--json", "is an input")
    assert hr.read_bytes() == truth
    run = srkd(home, "eval", "-d", data, "-m", "bicubic", "-s", "2", "--json", f"{tmp_path}/rep/")
    one_error(run, "--json", "is a folder")
    # the folder beside the data is fine, and the images are written whole
    run = srkd(home, "eval", "-d", data, "-w", named_hr, "-s", "2", "--backend", "torch", "--save-images",
               tmp_path / "saved", "--json", tmp_path / "e.json")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "saved" / "set" / "HR" / "hr.png").is_file() and hr.read_bytes() == truth
    assert json.loads((tmp_path / "e.json").read_text())[0]["model"] == "HR"


def test_eval_grey_lr_and_sr_beside_rgb_hr_count_as_r_equals_g_equals_b(tmp_path, home):
    data = tmp_path / "grey"
    rgb = image(data / "HR" / "c.png", 32, 32)
    lr = np.asarray(PILImage.open(rgb).convert("L").resize((16, 16)))
    (data / "LR_bicubic" / "X2").mkdir(parents=True)
    PILImage.fromarray(lr, "L").save(data / "LR_bicubic" / "X2" / "cx2.png")
    sr = tmp_path / "sr"
    sr.mkdir()
    PILImage.open(rgb).convert("L").save(sr / "c.png")
    run = srkd(home, "eval", "-d", data, "-s", "2", "-m", "bicubic", "--sr", sr, "--json", tmp_path / "g.json")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    bicubic, grey = json.loads((tmp_path / "g.json").read_text())
    assert bicubic["n_images"] == grey["n_images"] == 1
    # the grey copy of random RGB: its luma is the HR's (to rounding), its colours are not
    assert grey["psnr_y"] > 35 and grey["psnr_rgb"] < 20, grey


# ---------------------------------------------------------------- Medium 3 and 4: batches


def test_a_recursive_run_into_a_folder_inside_its_input_leaves_its_outputs_alone(tmp_path, home, weights):
    src = tmp_path / "in"
    image(src / "a.png")
    image(src / "sub" / "b.png")
    up = ("upscale", "-r", src, "-o", src / "out", "-w", weights, "--backend", "torch")
    assert srkd(home, *up, "-q").returncode == 0
    run = srkd(home, *up, "--skip-existing")
    assert run.returncode == 0, run.stderr
    assert "upscaled 0 of 0 image(s); 2 skipped" in run.stdout and "left out 2 image(s) under the output folder" in run.stderr
    run = srkd(home, *up)  # a plain rerun: the outputs are there, nothing is an input
    assert run.returncode == 1 and "already exists" in run.stderr and "would overwrite an input" not in run.stderr
    made = sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))
    assert made == ["a.png", "out/a_x2.png", "out/sub/b_x2.png", "sub/b.png"]


def test_an_over_long_output_name_fails_that_image_and_the_batch_goes_on(tmp_path, home, weights):
    src = tmp_path / "in"
    image(src / "a.png")
    image(src / ("b" * 240 + ".png"))  # a legal name; with _x2 and the temporary file's part, too long
    run = srkd(home, "upscale", src, "-o", tmp_path / "out", "-w", weights, "--backend", "torch")
    assert "file name too long" in one_error(run, "b" * 240)
    assert run.returncode == 1 and "upscaled 1 of 2 image(s)" in run.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x2.png"]
    run = srkd(home, "upscale", src / "a.png", "-o", tmp_path / "o2/", "-w", weights, "--suffix", "s" * 300)
    one_error(run, "file name too long")


# ---------------------------------------------------------------- Low: stdout, names, temporary files, alpha


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_one_line(tmp_path, home, weights):
    a = image(tmp_path / "a.png")
    for args in (["--version"], ["upscale", a, "-o", tmp_path / "o/", "-w", weights, "--backend", "torch"],
                 ["upscale", a, "-o", "-", "--format", "png", "-w", weights, "--backend", "torch"]):
        with open("/dev/full", "w") as full:
            run = srkd(home, *args, stdout=full)
        assert run.returncode == 1, (args, run.stderr)
        assert "could not write stdout (No space left on device)" in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr and "Exception" not in run.stderr


def test_control_characters_in_file_names_are_escaped(tmp_path, home, weights):
    bad = tmp_path / "e\x1b[2Jvil\nname.png"
    bad.write_bytes(b"not an image")
    run = srkd(home, "upscale", bad, "-o", tmp_path / "o/", "-w", weights)
    line = one_error(run, "e\\x1b[2Jvil\\nname.png", "not an image")
    assert "\x1b" not in run.stderr and line.endswith("TIFF expected)")  # no raw newline split the line


def test_stale_temporary_files_of_a_killed_run_are_removed_and_live_ones_kept(tmp_path, home, weights):
    a = image(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid whose process has ended, as after kill -9
    dead, live = out / f".a_x2.png.{gone.pid}.k9x2ab3c.tmp", out / f".a_x2.png.{os.getpid()}.q1w2e3r4.tmp"
    other = out / f".notes.txt.{gone.pid}.tmp"  # not beside an output of this run: not ours to judge
    for p in (dead, live, other):
        p.write_bytes(b"half a png")
    run = srkd(home, "upscale", a, "-o", f"{out}/", "-w", weights, "--backend", "torch")
    assert run.returncode == 0 and "removed 1 temporary file(s)" in run.stderr, run.stderr
    assert not dead.exists() and live.exists() and other.exists() and (out / "a_x2.png").is_file()
    dead.write_bytes(b"half a png")
    run = srkd(home, "upscale", a, "-o", f"{out}/", "-w", weights, "--skip-existing")
    assert run.returncode == 0 and "1 skipped" in run.stdout and not dead.exists(), run.stderr


def test_fully_transparent_and_opaque_alpha_stay_exact(tmp_path, home):
    """The default model rings at the borders of a flat plane (alpha 1-3 of 255 there)."""
    arr = RNG.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    for value in (0, 255):
        arr[:, :, 3] = value
        PILImage.fromarray(arr, "RGBA").save(tmp_path / f"t{value}.png")
    run = srkd(home, "upscale", tmp_path / "t0.png", tmp_path / "t255.png", "-o", tmp_path / "o", "--alpha", "model")
    assert run.returncode == 0, run.stderr
    for value in (0, 255):
        alpha = np.asarray(PILImage.open(tmp_path / "o" / f"t{value}_x4.png"))[:, :, 3]
        assert alpha.shape == (64, 64) and (alpha == value).all(), (value, alpha.min(), alpha.max())


# ---------------------------------------------------------------- Low: misleading messages


def test_odd_inputs_and_options_get_one_clear_line(tmp_path, home, weights):
    a = image(tmp_path / "a.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    run = srkd(home, "upscale", fifo, "/dev/zero", a, "-o", tmp_path / "o/", "-w", weights, "--max-pixels", "100")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"{fifo}: not a regular file (a FIFO)" in run.stderr and "/dev/zero: not a regular file (a device)" in run.stderr
    assert "no such file" not in run.stderr
    assert "claimed size 14x12 (168 pixels) exceeds the limit of 100 pixels" in run.stderr  # not "0 MP"
    # nothing ran: the summary names no model and no time
    assert run.stdout.strip() == "upscaled 0 of 3 image(s); 3 failed"
    run = srkd(home, "upscale", a, "--max-pixels", "-1", "-w", weights)
    assert run.returncode == 2 and "--max-pixels" in one_error(run)
    run = srkd(home, "upscale", a, "-s", "1e308", "-w", weights)
    assert one_error(run, "--scale 1e308: use 2, 3 or 4") and len(run.stderr) < 200


# ---------------------------------------------------------------- Low: srkd export


def test_export_format_follows_the_suffix_and_bad_options_stop_before_writing(tmp_path, home):
    run = srkd(home, "export", "repsr-x2", "-o", tmp_path / "m.pt")
    assert run.returncode == 0 and "(torchscript," in run.stdout, run.stderr
    assert (tmp_path / "m.pt").read_bytes()[:2] == b"PK"  # a TorchScript zip, not ONNX
    for args, says in ((["-f", "torchscript", "-o", tmp_path / "m.onnx"], "disagree"),
                       (["-o", f"{tmp_path}/dir/"], "is a folder"),
                       (["-o", tmp_path / "x.onnx", "--opset", "99999"], "--opset 99999: srkd exports opset 17 to"),
                       (["-o", tmp_path / "y.onnx", "--weight-bits", "7"], "--weight-bits is for --int8")):
        run = srkd(home, "export", "repsr-x2", *args)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, (args, run.stderr)
        one_error(run, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no file named dir, m.onnx, x.onnx or y.onnx
    run = srkd(home, "export", "bsrn-x2", "--int8", "-o", tmp_path / "q.onnx")
    line = one_error(run, "--int8: only", "export without --int8")
    assert "--precision" not in line and not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------- Low: help and version


def test_help_names_every_option_whole_at_80_columns_and_comes_from_the_registry(home):
    """One child process, several `main` calls at COLUMNS=80: each command's --help holds each of its
    option names whole; the defaults and pairings shown are the registry's; --version is the package's."""
    code = (
        "import json, sys, io, contextlib\n"
        "from srkd_cli.cli import main, _command\n"
        "group = _command()\n"
        "out = {}\n"
        "for name in [None, *group.commands]:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        main([name, '--help'] if name else ['--help'])\n"
        "    cmd = group.commands[name] if name else group\n"
        "    shown = [p for p in cmd.params if not getattr(p, 'hidden', False)]\n"
        "    opts = [o for p in shown for o in (*p.opts, *p.secondary_opts) if o.startswith('-')]\n"
        "    out[name or ''] = [buf.getvalue(), opts]\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    main(['--version'])\n"
        "out['--version'] = [buf.getvalue(), []]\n"
        "sys.stdout.write(json.dumps(out))\n"
    )
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(REPO), SRKD_HOME=str(home / "home"))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    helps = json.loads(run.stdout)
    assert {"upscale", "eval", "bench", "export", "distill"} <= set(helps)
    for name, (text, opts) in helps.items():
        if name == "--version":
            continue
        assert "…" not in text, name
        for opt in opts:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (name, opt)
    flat = {name: " ".join(text.split()) for name, (text, _) in helps.items()}
    assert helps["--version"][0] == f"srkd {__version__}\n"
    for model in DEFAULT_MODELS.values():
        assert model in flat["upscale"] and model in flat["bench"]
    assert "squeezesr-kd" not in flat["upscale"]
    from srkd_cli.training.recipes import ANY_STUDENT, ANY_TEACHER, PAIRINGS

    for student, teacher in PAIRINGS:
        if student == ANY_STUDENT:  # the fallback for every other pair (issue 35)
            assert "any other pair: output KD" in flat["distill"]
            continue
        assert re.search(rf"{student} from [^;]*{'any other' if teacher == ANY_TEACHER else teacher}", flat["distill"]), \
            (student, teacher)


def test_the_backend_table_in_docs_names_what_auto_runs_today():
    """docs/upscale.md's table: the architectures with a receptive field (halo) run on onnxruntime on
    the CPU, the rest on torch, and the summary example names the default model."""
    text = (REPO / "docs" / "upscale.md").read_text()
    section = text.split("## Backends", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    ort_row = next(r for r in rows if r.split("|")[2].strip().startswith("`onnxruntime` (part of the default install)"))
    torch_row = next(r for r in rows if r.split("|")[2].strip() == "`torch`")
    for spec in ARCHS.values():
        fast = halo_radius(spec.build(2)) is not None
        name = spec.cls.__name__
        assert (name in ort_row.split("|")[1]) == fast and (name in torch_row.split("|")[1]) != fast, name
    assert f"with\n{DEFAULT_MODELS[2]} in" in section or f"with {DEFAULT_MODELS[2]} in" in section


# ---------------------------------------------------------------- the README's install line


def test_readme_says_how_to_get_the_cpu_build_of_torch():
    text = (REPO / "README.md").read_text()
    tested = re.search(r"pip install torch==([\d.]+) -e \. && \.venv/bin/srkd upscale", text)
    cpu = re.search(r"pip install torch==([\d.]+) --index-url https://download\.pytorch\.org/whl/cpu && "
                    r"\.venv/bin/pip install -e \.", text)
    assert tested and cpu and tested.group(1) == cpu.group(1)
    # the pin is the torch that runs here (installed by the tested command)
    run = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True, timeout=300)
    assert run.stdout.strip().split("+")[0] == tested.group(1), run.stdout
