"""The wheel carries the constitution, the principle library and the schemas, and finds them by name once installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_ships_constitution_principles_and_schemas(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("rlaif-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("rlaif/constitution/default.yaml", "rlaif/constitution/harmless.yaml",
                     "rlaif/principles/harmless.yaml", "rlaif/principles/helpful.yaml",
                     "rlaif/principles/honest.yaml", "rlaif/schemas/constitution.schema.json"):
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import rlaif.constitution as c; assert str(c.data_dir('principles')).startswith(%r); "
            "print(len(c.load_constitution('default').principles))" % str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 16
