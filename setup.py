"""The one weights.toml (the repository's top level) travels inside the package as package data.

No symlink: checkouts without symlinks (Windows, some archives) would get a text file holding a path.
A wheel or a regular install gets a copy at build time; a source checkout or an editable install
reads the top-level file itself (srkd_cli/zoo/__init__.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "srkd_cli" / "weights.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "weights.toml", target)


setup(cmdclass={"build_py": BuildPy})
