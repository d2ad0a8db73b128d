"""``massive-activations``: the installed console command, one sub-command per flow plus the server.

``massive-activations <flow> [options]`` is exactly ``python -m flows.<flow> [options]`` (the command line
generated from the flow's schema, same exit codes, ``--help``, ``--json``, one-line errors). ``server``,
``serve`` and ``deploy`` run the documented Prefect commands with the project's settings: the server on
loopback, analytics off, and serve/deploy from wherever the package is installed. Flow modules are imported
only when their sub-command runs, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from massive_activations import __version__
from massive_activations.provenance import code_hash, git_commit

FLOWS = {  # sub-command: (module, what it does)
    "pipeline": ("pipeline", "offline suite (or Hub models) → capture → fit → regress → predict → evaluate"),
    "offline-suite": ("offline_suite", "train the offline suite of tiny models, with their checkpoints"),
    "capture": ("capture", "per-layer massive-activation statistics for models × checkpoints"),
    "fit": ("fit", "the emergence function per model and layer"),
    "regress": ("regress", "regressors from architecture to the emergence parameters"),
    "predict": ("predict", "emergence parameters and curves for an architecture, before training it"),
    "evaluate": ("evaluate", "SAEs, ITDA and quantization across checkpoints"),
    "monitor": ("monitor", "capture new checkpoints of a training run, refit, forecast"),
    "released": ("released", "the paper's released Pythia measurements: import, fit, compare (Tables 1 and 3)"),
}
SERVICES = {
    "server": "start a Prefect server and its UI on loopback (http://127.0.0.1:4200), analytics off; "
              "options of prefect server start",
    "serve": "serve every deployment from this process (needs PREFECT_API_URL)",
    "deploy": "register every deployment of prefect.yaml on the ma-process work pool; options of prefect deploy",
}
# The project's Prefect settings, unless the environment says otherwise.
PREFECT_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def version() -> str:
    """The version line: package version, the code hash every artefact records, and the git commit if any."""
    commit = git_commit()
    return f"massive-activations {__version__} (code {code_hash()}" + (f", git {commit})" if commit else ")")


def usage() -> str:
    width = max(map(len, [*FLOWS, *SERVICES]))
    lines = ["usage: massive-activations <command> [options]   (massive-activations <command> --help for its options)",
             "", "flows:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (_, what) in FLOWS.items()]
    lines += ["", "Prefect:"] + [f"  {name.ljust(width)}  {what}" for name, what in SERVICES.items()]
    lines += ["", "  --version  the version and the code hash recorded in every artefact's provenance"]
    return "\n".join(lines)


def _prefect_env() -> dict[str, str]:
    return {**PREFECT_DEFAULTS, **os.environ}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a flow's command line or a Prefect service; the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(version())
        return 0
    command, rest = args[0], args[1:]
    if command in FLOWS:
        module = importlib.import_module(f"flows.{FLOWS[command][0]}")
        return module.main(rest, prog=f"massive-activations {command}")
    if command == "server":
        host = [] if any(a.startswith("--host") for a in rest) else ["--host", "127.0.0.1"]
        return subprocess.run([sys.executable, "-m", "prefect", "server", "start", *host, *rest],
                              env=_prefect_env()).returncode
    if command == "serve":
        os.environ.update(_prefect_env())
        from deployments.serve import main as serve
        return serve(rest)
    if command == "deploy":
        os.environ.update(_prefect_env())
        from deployments.deploy import main as deploy
        return deploy(rest)
    print(f"error: no command {command!r} (one of: {', '.join([*FLOWS, *SERVICES])}; see massive-activations "
          "--help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
