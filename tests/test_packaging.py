"""The wheel carries the constitution, the principle library, the schemas and the quickstart, and finds them by name
once installed (`rlaif init` works from the wheel)."""

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
                     "rlaif/principles/honest.yaml", "rlaif/schemas/constitution.schema.json",
                     "rlaif/constitution/judge.yaml", "rlaif/examples/quickstart/recipe.yaml",
                     "rlaif/examples/quickstart/prompts.jsonl", "rlaif/examples/quickstart/eval.jsonl"):
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (f"import rlaif.constitution as c; assert str(c.data_dir('principles')).startswith({str(site)!r}); "
            "import rlaif.workspace as w; w.init('project'); "
            "print(len(c.load_constitution('project/constitution.yaml').principles))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 16
