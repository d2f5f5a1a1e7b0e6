"""`srkd_cli.upscale_files`, the Python API `srkd upscale` is a shell over (issue 34): the same
files for the same options, and the logic that moved out of the command (the fractional-scale
rule, torchrun's shares, the report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import srkd_cli
from srkd_cli.distributed import DistEnv
from srkd_cli.errors import ConfigError, OutputError
from srkd_cli.upscale import UpscaleHooks, UpscaleRequest, on_main, parse_scale, parse_tile, share


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pixels(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        return np.asarray(im)


def same_files(a: Path, b: Path) -> None:
    """Folders `a` and `b` hold the same file names with the same pixels."""
    names = sorted(p.name for p in a.iterdir())
    assert names and names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert np.array_equal(pixels(a / name), pixels(b / name)), name


@pytest.mark.parametrize("case", ["folder-tiled", "fraction-jpeg"])
def test_upscale_files_writes_what_the_cli_writes(tmp_path, run_cli, set5, case):
    lr = set5 / "LR_bicubic" / "X4"
    if case == "folder-tiled":  # a folder of real images, tiled, with a suffix
        options = dict(inputs=[str(lr)], scale=2, tile="40", tile_overlap=8, suffix="_sr")
        args = [lr, "--scale", "2", "--tile", "40", "--tile-overlap", "8", "--suffix", "_sr"]
        name, out = "headx4_sr.png", None
    else:  # one file, a fractional scale (the next model scale up, resampled down), JPEG at quality 90
        options = dict(inputs=[str(lr / "headx4.png")], scale="1.5", format="jpg", quality=90)
        args = [options["inputs"][0], "--scale", "1.5", "--format", "jpg", "--quality", "90"]
        name, out = "head.jpg", "head.jpg"
    common = dict(device="cpu", backend="torch")  # one backend: auto would time the candidates
    api, cli = tmp_path / "api", tmp_path / "cli"
    outcome = srkd_cli.upscale_files(UpscaleRequest(output=str(api / out) if out else str(api) + "/", **options, **common))
    code, stdout, err = run_cli("upscale", *args, "-o", cli / out if out else str(cli) + "/", "--device", "cpu",
                                "--backend", "torch")
    assert code == 0, err
    assert outcome.ok and outcome.main and outcome.failed == [] and outcome.unmatched == []
    assert all(r.ok for r in outcome.results) and len(outcome.results) == len(list(cli.iterdir()))
    assert f"x{outcome.final_scale:g} with {outcome.model} in" in stdout and f"({outcome.backend})" in stdout
    assert (api / name).is_file()
    same_files(api, cli)
    if case == "fraction-jpeg":
        assert outcome.scale == 2 and outcome.outscale == 1.5
        w, h = outcome.results[0].size_in
        assert outcome.results[0].size_out == (int(w * 1.5), int(h * 1.5)) == PILImage.open(api / name).size


def test_parse_scale_holds_the_fractional_rule():
    assert parse_scale(None) == (None, None)
    assert parse_scale(3) == parse_scale("3") == parse_scale(3.0) == (3, None)
    assert parse_scale(3.5) == parse_scale("3.5") == (4, 3.5)  # the next model scale up, then resampled down
    assert parse_scale(2.5) == (3, 2.5) and parse_scale("1.2") == (2, 1.2)
    for text, says in (("4.5", "between 1 and 4"), ("0.5", "between 1 and 4"), ("5", "use 2, 3 or 4"),
                       ("1e308", "--scale 1e308: use"), ("big", "--scale big: give")):
        with pytest.raises(ConfigError, match=says):
            parse_scale(text)
    assert parse_tile("auto") == "auto" and parse_tile("none") is None and parse_tile(0) is None
    assert parse_tile("64") == parse_tile(64) == 64


def test_a_fraction_takes_a_familys_next_scale_and_refuses_a_single_model_below_it(tmp_path, set5):
    src = set5 / "LR_bicubic" / "X4"
    image = sorted(src.iterdir())[0]
    outcome = srkd_cli.upscale_files(UpscaleRequest([image], output=tmp_path / "a.png", scale=2.5, model="squeezesr-kd",
                                                    device="cpu", backend="torch"))
    assert outcome.ok and outcome.scale == 3 and outcome.model == "squeezesr-kd-x3"
    with pytest.raises(ConfigError, match="squeezesr-kd-x2 upscales x2, less than that"):
        srkd_cli.upscale_files(UpscaleRequest([image], output=tmp_path / "b.png", scale=2.5, model="squeezesr-kd-x2",
                                              device="cpu", backend="torch"))
    assert not (tmp_path / "b.png").exists()


def test_ranks_share_the_jobs_round_robin_and_one_plan_without_a_group():
    jobs = list(range(7))
    shares = [share(jobs, DistEnv(rank, 3)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert share(jobs, DistEnv()) == jobs
    assert on_main(DistEnv(), lambda: "plan") == "plan"  # no process group: the work runs here


def test_hooks_report_and_a_report_that_cannot_be_written(tmp_path, set5):
    src = set5 / "LR_bicubic" / "X4"
    heard = {"started": [], "done": [], "notes": []}
    hooks = UpscaleHooks(note=heard["notes"].append, started=lambda *a: heard["started"].append(a),
                         done=heard["done"].append)
    request = UpscaleRequest([src], output=tmp_path / "out", scale=2, device="cpu", backend="torch",
                             report=tmp_path / "r.json")
    outcome = srkd_cli.upscale_files(request, hooks)
    n = len(list(src.iterdir()))
    assert outcome.ok and heard["started"] == [(n, 2, outcome.model)] and len(heard["done"]) == n
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["input"] for r in records] == [r.input for r in outcome.results] and all(r["ok"] for r in records)
    # A file that appears at the report's path mid-batch is not replaced; the images are still
    # written, and the outcome says so rather than raising.
    late = tmp_path / "late.json"
    again = UpscaleRequest([src], output=tmp_path / "out2", scale=2, device="cpu", backend="torch", report=late)
    outcome = srkd_cli.upscale_files(again, UpscaleHooks(started=lambda *a: late.write_text("theirs")))
    assert not outcome.ok and outcome.failed == [] and late.read_text() == "theirs"
    assert outcome.report_error.startswith(f"--json {late}: already exists")
    assert len(list((tmp_path / "out2").iterdir())) == n


def test_what_stops_the_whole_batch_raises_one_line(tmp_path, set5):
    image = sorted((set5 / "LR_bicubic" / "X4").iterdir())[0]
    for request, says in ((UpscaleRequest([]), "no inputs"),
                          (UpscaleRequest([image], alpha="premultiplied"), "--alpha premultiplied"),
                          (UpscaleRequest([image], suffix="/../x"), "--suffix"),
                          (UpscaleRequest([image], output=tmp_path / "a.png", report=image), "is an input"),
                          (UpscaleRequest([image, "-"], output=tmp_path / "a.png"), "stdin holds one image")):
        with pytest.raises(OutputError if says == "is an input" else ConfigError, match=says) as e:
            srkd_cli.upscale_files(request)
        assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
