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
def run_cli(capsys):
    """Run `srkd ARGS` in-process: (exit code, stdout, stderr)."""
    from srkd_cli.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
