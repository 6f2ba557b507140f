"""Create the isolated virtualenv that runs TRL 0.19.1's PPOTrainer (the benchmark's peer).

Standard library only, so the benchmark driver can import it from any interpreter:

    from bench.trl019.setup_venv import ensure_venv
    python = ensure_venv(repo_root)   # -> repo_root/bench/.venv-trl019/bin/python

The venv is created once; a marker file holding the hash of requirements.txt makes later
calls instant (and a changed requirements.txt triggers a re-install into the same venv).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

VENV_RELPATH = Path("bench") / ".venv-trl019"
REQUIREMENTS_RELPATH = Path("bench") / "trl019" / "requirements.txt"
MARKER_NAME = ".rlaif-trl019-complete"


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":  # pragma: no cover - the project targets Linux
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _requirements_digest(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def ensure_venv(root: Path) -> Path:
    """Return the python of ``root/bench/.venv-trl019``, creating/installing it if needed."""
    root = Path(root).resolve()
    venv = root / VENV_RELPATH
    requirements = root / REQUIREMENTS_RELPATH
    python = _venv_python(venv)
    marker = venv / MARKER_NAME
    digest = _requirements_digest(requirements)

    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return python

    print(
        f"[trl019] installing TRL 0.19.1 venv into {venv} (one time, a few minutes)...",
        file=sys.stderr,
        flush=True,
    )
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)

    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    # requirements.txt pins torch==2.13.0, the main venv's version (2.13.0+cpu wheel in the
    # machine's local wheel dir). The machine-wide pip constraint (torch<=2.14.1) allows it,
    # so no PIP_CONSTRAINT override is needed.
    cmd = [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"[trl019] pip install failed (exit {result.returncode}): {' '.join(cmd)}"
        )
    # Smoke check: the import the benchmark needs.
    subprocess.run(
        [str(python), "-c", "from trl import PPOTrainer, PPOConfig"], env=env, check=True
    )
    marker.write_text(digest + "\n")
    return python


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[2]
    print(ensure_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else here))
