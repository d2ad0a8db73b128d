"""``python deployments/deploy.py [options of prefect deploy]`` or ``massive-activations deploy``: every
deployment of prefect.yaml onto the process work pool, with the monitor's schedule from the same settings
serve.py uses (settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from deployments.settings import monitor_environment  # noqa: E402


def main(argv: list[str]) -> int:
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(HERE / "prefect.yaml"),
               "--all", *argv]
    # the pull step's {{ $PWD }}: where flows/ lies, the checkout's root or site-packages of an installed package
    env = {**os.environ, **monitor_environment(), "PWD": str(HERE.parent)}
    return subprocess.run(command, cwd=HERE.parent, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
