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


# Run argv[2:] under an optional address-space limit (argv[1], bytes; 0: none) and print its peak RSS
# last on stdout. A fresh small parent: a child forked from the test process (an xdist worker that
# has grown to 1 GB) starts its ru_maxrss at that process's size, whatever it uses itself.
_PEAK_PROBE = """
import os, resource, subprocess, sys
cap = int(sys.argv[1])
def limit():
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
r = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=limit)
sys.stderr.write(r.stderr)
sys.stdout.write(r.stdout + "\\n" + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r.returncode)
"""


def run_with_peak_rss(cmd, env, address_space: int = 0, timeout: float = 300):
    """Run `cmd` (Linux): (CompletedProcess with its own stdout and stderr, its peak RSS in KiB)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(address_space), *map(str, cmd)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    out, _, peak = r.stdout.rpartition("\n")
    r.stdout = out
    return r, int(peak)
