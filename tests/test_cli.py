import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def test_help_lists_the_subcommands(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for name in ("train", "distill", "eval", "upscale", "models", "bench", "export"):
        assert name in out


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "srkd_cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "upscale" in r.stdout


def test_cli_reproduces_official_swinir_output(run_cli, tmp_path, fixture_dir):
    out = tmp_path / "out.png"
    code, _, err = run_cli(
        "upscale", fixture_dir / "swinir_official_2rstb_x2_in.png", "-o", out,
        "--weights", fixture_dir / "swinir_official_2rstb_x2.pth", "--scale", "2", "--device", "cpu", "--quiet",
    )
    assert code == 0, err
    got = np.asarray(Image.open(out)).astype(int)
    want = np.asarray(Image.open(fixture_dir / "swinir_official_2rstb_x2_expected.png")).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1


def test_bad_weights_file_is_one_line(run_cli, tmp_path, fixture_dir):
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint")
    code, _, err = run_cli("upscale", fixture_dir / "swinir_official_2rstb_x2_in.png", "-o", tmp_path / "o.png", "--weights", bad)
    assert code != 0
    assert "weights.pth" in err and "not a checkpoint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        "upscale", fixture_dir / "swinir_official_2rstb_x2_in.png", "-o", tmp_path / "o.png",
        "--weights", fixture_dir / "swinir_official_2rstb_x2.pth", "--scale", "3",
    )
    assert code != 0 and "upscales x2, not x3" in err
    assert not (tmp_path / "o.png").exists()


def test_internal_errors_are_one_line_and_debug_shows_traceback(run_cli, monkeypatch):
    import srkd_cli.cli.models as models_cmd
    from srkd_cli import zoo

    def boom():
        raise ZeroDivisionError("kaboom")

    monkeypatch.setattr(zoo, "get_zoo", boom)
    monkeypatch.setattr(models_cmd, "get_zoo", boom, raising=False)
    code, _, err = run_cli("models")
    assert code == 1 and "internal error" in err and "--debug" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,says", [
    (["eval", "--scale", "2"], "Missing option '--data'"),
    (["upscale"], "Missing argument"),
    (["upscale", "x.png", "--png-compression", "12"], "--png-compression"),
    (["upscale", "x.png", "--quality", "0"], "--quality"),
    (["upscale", "x.png", "--no-such-option"], "No such option"),
    (["frobnicate"], "No such command"),
])
def test_usage_errors_are_one_line_exit_2(run_cli, argv, says):
    """Typer's own option checks (missing, out of range, unknown) read like srkd's errors."""
    code, out, err = run_cli(*argv)
    assert code == 2 and says in err and "internal error" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_train_set_and_bench_model_options_parse_values_alike():
    """`--set KEY=VALUE` and `bench --model ARCH:KEY=VALUE` share one parser (srkd_cli.config)."""
    from srkd_cli.config import parse_settings as _parse_sets
    from srkd_cli.config import parse_setting
    from srkd_cli.errors import ConfigError

    got = _parse_sets(["n-feats=8", "res_scale=0.5", "flag=TRUE", "off=false", "name=abc"])
    assert got == {"n_feats": 8, "res_scale": 0.5, "flag": True, "off": False, "name": "abc"}
    assert type(got["n_feats"]) is int and type(got["flag"]) is bool
    assert parse_setting("blocks=2") == ("blocks", 2)
    for bad in ("blocks", "=3"):
        with pytest.raises(ValueError):
            parse_setting(bad)
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            _parse_sets([bad])


def test_debug_is_in_every_commands_help(run_cli):
    """`--debug` works after any command (main takes it out of the arguments): --help says so."""
    for name in ("upscale", "eval", "train", "distill", "models", "bench", "export"):
        code, out, _ = run_cli(name, "--help")
        assert code == 0 and "--debug" in out and "traceback" in out, name
