"""Launching the trainer's CLI under torchrun from a test: one place for the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def train_under_torchrun(
    config: dict[str, Any], config_file: Path, nproc: int = 2, timeout: int = 600
) -> None:
    """Write ``config`` as the YAML ``config_file`` and run ``python -m training`` on it under
    ``torchrun --standalone`` with ``nproc`` gloo processes of one thread each; a failed launch
    fails the test with the end of its stderr."""
    config_file.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "training"]
        + ["--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-4000:]
