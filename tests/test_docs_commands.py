"""Every command the README and the documentation site (``docs/*.md``) show works as written, or fails fast
with the message they give.

Commands are extracted from the pages' ``bash`` blocks (continuation lines joined). Each flow
command is parsed by the flow's own generated command line, its values validated and prechecked,
so a flag that does not exist, or a value the flow refuses, fails here. Then each is run:

- the fast ones for real, in a scratch folder (``data`` there is the store), after the README's micro
  pipeline (``RUN``: exit code and a line the output must hold);
- those that need a GPU, on a machine without one: they must stop at once (before any server starts)
  with the one-line message the README documents;
- those that need the network, an S3 server or a long run are parsed and validated only (``PARSED``,
  each with the reason).

``make``, ``prefect`` and script commands are checked to exist (``make -n``, ``--help``, the file),
and ``prefect deployment run`` parameters are validated against the deployed flow. Any other flag
the README mentions in running text must be an option of some flow or of the tools it names.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows import cli
from flows.command import FLOWS
from flows.prechecks import precheck
from massive_activations.errors import BadInputError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MICRO_PIPELINE = ".venv/bin/python -m flows.pipeline --suite micro"
# Run for real after MICRO_PIPELINE, in order, on the same scratch store: (exit code, a line of the output).
TOOL = ".venv/bin/massive-activations"
RUN = {
    MICRO_PIPELINE: (0, "Evaluation tokens of nx-l2-d32-h2: "),
    # the console command on the same store: everything found there, nothing recomputed
    ".venv/bin/massive-activations pipeline --suite micro --store data": (0, "Evaluation tokens of nx-l2-d32-h2: "),
    ".venv/bin/python -m flows.regress --store data": (0, "project configuration, leave_one_model_out: "),
    ".venv/bin/python -m flows.predict --n-layers 5 --d-model 80 --n-heads 5": (0, "figure: file://"),
    ".venv/bin/python -m flows.predict --architecture pythia-410m": (0, "figure: file://"),
    ".venv/bin/massive-activations --version": (0, "massive-activations "),
    ".venv/bin/python -m flows.fit --models pythia-70m,pythia-160m --store data":
        (2, "error: no ratios on file://"),  # documented: capture them first (the Hub and a GPU)
}
NO_CUDA = "error: device 'cuda' asked for, but CUDA is not available on this machine"
PARSED = {  # parsed and validated only, and why
    ".venv/bin/python -m flows.pipeline --store s3://my-bucket/massive-activations": "needs an S3 server",
    ".venv/bin/python -m flows.fit --models allenai/OLMo-2-0425-1B,LLM360/Amber --store data":
        "needs their capture from the Hub",
    ".venv/bin/python -m flows.evaluate --models nx-l4-d64-h4 --steps every=6 --kinds sae,itda,quant":
        "needs the default suite captured: make run",
    ".venv/bin/python -m flows.pipeline --runner-kind dask": "a long run (make run's, on Dask)",
    "PREFECT_API_URL=http://10.0.0.4:4200/api .venv/bin/python -m flows.pipeline --runner-kind dask "
    "--dask-address tcp://10.0.0.5:8786":
        "needs a Dask cluster and a server it can reach",
    ".venv/bin/python -m flows.predict --architecture path/to/config.json": "stands for the user's own file",
    ".venv/bin/python -m flows.monitor /runs/my-run": "stands for the user's own training run",
    ".venv/bin/python -m flows.released": "needs the Hub (tests/test_released.py runs it against a loopback Hub)",
    ".venv/bin/python -m flows.released --models pythia-160m,pythia-1.4b --no-train-regressors": "needs the Hub",
}
# Install commands: what runs them (tests/test_packaging.py installs the lock and a wheel the same way).
INSTALL = {
    "python3 -m venv .venv": "make install",
    ".venv/bin/pip install --require-hashes -r requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu":
        "the wheel test installs the lock into a new environment (with uv; the extra index is unreachable here)",
    ".venv/bin/pip install --no-deps .": "the wheel test installs the built wheel",
    ".venv/bin/pip install torch==2.13.0": "a GPU machine's CUDA build",
    "grep -v '^torch==' requirements.lock > /tmp/no-torch.lock": "a GPU machine",
    ".venv/bin/pip install --no-deps -r /tmp/no-torch.lock": "a GPU machine",
}
# Flags of the tools the README names (not flows): pip, pytest, prefect, aws.
TOOL_FLAGS = {"--param", "--pool", "--type", "--host", "--help", "--dist", "--upgrade", "--strict", "--endpoint-url",
              "--require-hashes", "--extra-index-url", "--no-deps", "--port", "--version", "--check"}

# The command-line conventions' own placeholders ("each field is --group-field", "booleans are --x / --no-x").
PLACEHOLDERS = {"--field", "--group-field", "--x", "--no-x", "--prompts-"}


def readme_commands(text: str) -> list[str]:
    """Each command of the ``bash`` blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def _argv(command: str) -> list[str]:
    """The words after any leading VAR=value assignments; ``massive-activations <flow>`` as the
    ``python -m flows.<flow>`` it runs."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    if words[:1] == [TOOL] and words[1:2] and words[1] in FLOWS:
        words = [".venv/bin/python", "-m", f"flows.{FLOWS[words[1]][0]}", *words[2:]]
    return words


def _is_flow(command: str) -> bool:
    return "python -m flows." in command or (command.startswith(TOOL + " ") and command.split()[1] in FLOWS)


def _flow(module: str):
    mod = importlib.import_module(f"flows.{module}")
    return getattr(mod, module)


def _parse(argv: list[str]) -> dict:
    """The flow's resolved parameters, as the command line would run them (SystemExit on a bad flag)."""
    flow = _flow(argv[2].removeprefix("flows."))
    schema = flow.parameters.model_dump()
    opts = cli.options(flow)
    args = cli.build_parser(flow, "", opts).parse_args(argv[3:])
    params = cli.parameters(schema["properties"], opts, args)
    cli.validate(flow, params)
    return {name: prop["default"] for name, prop in schema["properties"].items() if "default" in prop} | params


def _env(**extra: str) -> dict:
    """As make sets it; one compute thread per command (the tests share the machine's two cores)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1", **extra}


def _start(command: str, cwd: Path, env: dict) -> subprocess.Popen:
    argv = [sys.executable if w == ".venv/bin/python" else w for w in _argv(command)]
    if argv[0] == TOOL:
        argv = [sys.executable, "-m", "flows.command", *argv[1:]]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


COMMANDS = list(dict.fromkeys(c for page in PAGES for c in readme_commands(page.read_text())))


def test_the_pages_show_commands_and_each_is_checked_here():
    flows = [c for c in COMMANDS if _is_flow(c)]
    assert MICRO_PIPELINE in COMMANDS and len(flows) >= 15, flows
    unchecked = [c for c in flows if c not in RUN and c not in PARSED and "--device cuda" not in c]
    assert not unchecked, f"commands shown that no test checks (add each to RUN or PARSED): {unchecked}"
    assert not [c for c in [*RUN, *PARSED, *INSTALL] if c not in COMMANDS], "commands listed here the pages lost"
    readme = readme_commands(README.read_text())
    assert readme[:2] == ["make run", "make test"], "the README starts with the two commands"


@pytest.mark.parametrize("command", [c for c in COMMANDS if _is_flow(c)])
def test_each_flow_command_parses_and_its_values_pass_the_checks(command):
    params = _parse(_argv(command))
    if "--device cuda" in command and not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="CUDA is not available"):
            precheck(params)
    else:
        precheck(params)


def test_a_flag_that_does_not_exist_fails_the_parse():
    """What the check above relies on: argparse refuses an unknown flag (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        _parse(_argv(".venv/bin/python -m flows.evaluate --mask-massive-factor ''"))
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", [c for c in COMMANDS if not _is_flow(c)])
def test_every_other_command_exists(command):
    argv = _argv(command)
    if command in INSTALL:
        assert argv[0] in ("python3", ".venv/bin/pip", "grep") and (ROOT / "requirements.lock").is_file()
    elif argv[0] == TOOL:  # --version runs as written; the Prefect services answer --help
        extra = [] if argv[1].startswith("--") else ["--help"]
        done = subprocess.run([sys.executable, "-m", "flows.command", *argv[1:], *extra], capture_output=True,
                              text=True, env=_env(), timeout=120)
        assert done.returncode == 0 and done.stdout.lower().startswith(("usage", "massive-activations ")), \
            (command, done.stderr[-500:])
    elif argv[0] == "export":
        assert all(re.fullmatch(r"[A-Z_]+=\S+", w) for w in argv[1:]), command
    elif argv[0] == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    elif argv[0] == ".venv/bin/prefect":
        words = [w for w in argv[1:] if not w.startswith("-")][:2]
        done = subprocess.run([str(Path(sys.executable).parent / "prefect"), *words, "--help"], capture_output=True,
                              text=True, env=_env(), timeout=120)
        assert done.returncode == 0, (command, done.stderr[-500:])
        if words == ["deployment", "run"]:
            flow = _flow(argv[3].split("/")[0])
            given = dict(v.split("=", 1) for k, v in zip(argv, argv[1:], strict=False) if k == "--param")
            cli.validate(flow, {k: json.loads(v) if v.startswith("{") else v for k, v in given.items()})
    else:
        assert argv[0] == ".venv/bin/python" and (ROOT / argv[1]).is_file(), command


def test_flags_in_the_running_text_exist():
    """Flags the README names in prose (``--refresh capture,fit``) are options of some flow or of a tool."""
    known = set(TOOL_FLAGS) | {"--json", "--debug", "--verbose"} | PLACEHOLDERS
    for module in ("pipeline", "offline_suite", "capture", "fit", "regress", "predict", "evaluate", "monitor",
                   "released"):
        parser = cli.build_parser(_flow(module), "", cli.options(_flow(module)))
        known |= {s for a in parser._actions for s in a.option_strings}
        known |= {f"--no-{s[2:]}" for a in parser._actions for s in a.option_strings}
    named = {flag for page in PAGES if page.name != "cli.md"
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page.read_text())}
    assert not named - known, sorted(named - known)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA says")
def test_gpu_commands_stop_at_once_with_the_documented_line(tmp_path):
    commands = [c for c in COMMANDS if "--device cuda" in c]
    assert all(NO_CUDA.removeprefix("error: ") in p.read_text() for p in (README, ROOT / "docs" / "operations.md"))
    procs = [_start(c, tmp_path, _env()) for c in commands]
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and err.strip() == NO_CUDA and out == "", (command, err[-1000:])
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_the_fast_commands_run_as_written(micro_suite, tmp_path):
    """The README's micro pipeline with the defaults, then the commands that use what it stored; the
    console is the project's lines only (Prefect's stay in the run's logs)."""
    shutil.copytree(Path(micro_suite.root) / "suites", tmp_path / "data" / "suites")  # built once per session
    env = _env(MA_STORE=str(tmp_path / "data"))
    # the pipeline, the console command's pipeline on the same store, then the others, one at a time: each
    # starts its own ephemeral server on a port Prefect draws from 8000-8999 and checks before binding, so two
    # started together can draw the same one, and the loser talks to the winner's server until it stops
    done = []
    for command in RUN:
        proc = _start(command, tmp_path, env)
        done.append((command, proc, *proc.communicate(timeout=1200)))
    for command, proc, out, err in done:
        code, line = RUN[command]
        assert proc.returncode == code, (command, (out + err)[-3000:])
        assert any(row.startswith(line) for row in (out + err).splitlines()), (command, line, (out + err)[-3000:])
        assert " | INFO " not in out + err and "prefect.io" not in err and "Finished in state" not in err, \
            (command, err[-3000:])
        assert "Warning" not in err, (command, err[-3000:])
        if code:
            assert len(err.strip().splitlines()) == 1 and out == "", (command, out + err)
