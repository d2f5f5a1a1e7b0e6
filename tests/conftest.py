from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# One thread: the test models are tiny, and on a busy 2-core machine two threads fight.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def set5() -> Path:
    return DATA / "Set5"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return DATA / "fixtures"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is not present (needs ../shared beside the repository)")
    return p


@pytest.fixture
def int8_env(tmp_path_factory, monkeypatch, set5):
    """int8 calibrated on the bundled Set5 HR, into one cache for the whole session (each model is
    quantised once, whichever test file needs it first)."""
    from srkd_cli import quantize

    cache = tmp_path_factory.getbasetemp() / "int8-cache"
    monkeypatch.setenv("SRKD_CACHE", str(cache))
    monkeypatch.setenv(quantize.CALIBRATION_ENV, str(set5 / "HR"))
    return cache


@pytest.fixture
def run_cli(capsys):
    """Run `srkd ARGS` in-process: (exit code, stdout, stderr)."""
    from srkd_cli.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_upscale_reproduces_fixture(run_cli, tmp_path: Path, stem: str, weights: Path) -> None:
    """`srkd upscale` of ../shared/fixtures/{stem}_in.png with `weights` is {stem}_expected.png within 1 grey level."""
    import numpy as np
    from PIL import Image

    expected = np.asarray(Image.open(shared_path("fixtures", f"{stem}_expected.png")).convert("RGB"), dtype=int)
    out = tmp_path / "out.png"
    code, _, err = run_cli("upscale", shared_path("fixtures", f"{stem}_in.png"), "-o", out, "--weights", weights,
                           "--device", "cpu", "--backend", "torch", "--quiet")
    assert code == 0, err
    got = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1
