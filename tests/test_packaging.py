"""One installable distribution, pinned: the lock satisfies pyproject.toml and is what .venv holds, the
command-line reference is current, and a wheel installed into a fresh environment outside the checkout
runs the console command and a flow from another directory."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flows import command
from massive_activations import __version__
from massive_activations.provenance import code_hash
from massive_activations.store import Store

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked(text: str) -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, hashes)}`` of a pip-compile lock (``name==version \\`` then ``--hash=`` lines)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if m := re.match(r"([A-Za-z0-9._-]+)==(\S+)", block):
            pins[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def unmet(pyproject: dict, pins: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Each requirement of pyproject.toml (dependencies and every extra) the lock lacks or pins outside
    its range, and each pin without a hash."""
    project = pyproject["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    problems = [f"{r} (locked: {pins.get(canonicalize_name(r.name), ('none',))[0]})" for r in wanted
                if canonicalize_name(r.name) not in pins
                or not r.specifier.contains(pins[canonicalize_name(r.name)][0], prereleases=True)]
    return problems + [f"{name}=={version} has no hash" for name, (version, hashes) in pins.items() if not hashes]


def test_the_lock_pins_every_requirement_within_pyproject_ranges_with_hashes():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked(LOCK.read_text())
    assert len(pins) > 100 and pins["torch"][0] == "2.13.0+cpu", "the lock holds the CPU wheel of torch"
    assert not unmet(pyproject, pins), f"requirements.lock is stale: run make lock ({unmet(pyproject, pins)})"


def test_the_staleness_check_catches_a_range_the_lock_no_longer_meets():
    """What the check above relies on: a raised lower bound, a new dependency and a hashless pin each fail."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked(LOCK.read_text())
    raised = {"project": {**pyproject["project"], "dependencies": [*pyproject["project"]["dependencies"],
                                                                    f"numpy>{pins['numpy'][0]}", "left-pad>=1"]}}
    assert unmet(raised, pins) == [f"numpy>{pins['numpy'][0]} (locked: {pins['numpy'][0]})",
                                   "left-pad>=1 (locked: none)"]
    assert unmet(pyproject, {**pins, "scipy": (pins["scipy"][0], [])}) == [f"scipy=={pins['scipy'][0]} has no hash"]


def test_the_environment_is_the_lock():
    """make install installs exactly the lock: a package at another version means .venv is stale."""
    pins = locked(LOCK.read_text())
    wrong = {name: (version, metadata.version(name)) for name, (version, _) in pins.items()
             if metadata.version(name) != version}
    assert not wrong, f".venv differs from requirements.lock (locked, installed): {wrong}"


def test_the_command_line_reference_is_current():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "cli_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert (ROOT / "docs" / "cli.md").read_text() == reference.render(), \
        "docs/cli.md is stale: run .venv/bin/python docs/cli_reference.py"


def test_the_server_command_stays_on_loopback_with_analytics_off(monkeypatch):
    calls = []
    monkeypatch.setattr(command.subprocess, "run", lambda argv, env: calls.append((argv, env)) or
                        subprocess.CompletedProcess(argv, 0))
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    assert command.main(["server", "--port", "4300"]) == 0
    (argv, env), = calls
    assert argv[1:] == ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4300"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    assert command.main(["pipline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no command 'pipline' (one of: pipeline,") and err.count("\n") == 1


def _run(argv: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (argv, (done.stdout + done.stderr)[-3000:])
    return done


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_the_flows(tmp_path):
    """Build the wheel, install it with the locked dependencies into a new environment, and run the
    command from a directory that is not the checkout, with nothing of the checkout on the path."""
    uv = Path(sys.executable).parent / "uv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MA_STORE")}
    env |= {"HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1",
            "UV_FIND_LINKS": os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS", "")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
          ROOT], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("massive_activations-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("massive_activations/store.py", "flows/pipeline.py", "tasks/policy.py", "deployments/serve.py",
                   "deployments/prefect.yaml"):
        assert member in names, member
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]

    venv = tmp_path / "venv"
    _run([uv, "venv", "-q", "--python", sys.executable, venv], tmp_path, env)
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "-q", "--python", python, "--require-hashes", "-r", LOCK], tmp_path, env)
    _run([uv, "pip", "install", "-q", "--python", python, "--no-deps", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tool = venv / "bin" / "massive-activations"
    assert "usage: massive-activations <command>" in _run([tool, "--help"], elsewhere, env).stdout
    # the installed files are the checkout's: the same code hash, and no git commit outside a checkout
    assert _run([tool, "--version"], elsewhere, env).stdout.strip() == f"massive-activations {__version__} " \
                                                                         f"(code {code_hash()})"
    assert _run([tool, "predict", "--help"], elsewhere, env).stdout.startswith("usage: massive-activations predict")
    found = _run([python, "-c", "import flows.pipeline, massive_activations, deployments.serve as s; "
                  "print(flows.pipeline.__file__); print(massive_activations.__file__); "
                  "print(*[d.entrypoint for d in s.deployments({})])"], elsewhere, env).stdout.split("\n")
    assert all(line.startswith(str(venv)) for line in found[:2]), found
    assert found[2].split() == ["flows.pipeline.pipeline", "flows.capture.capture", "flows.fit.fit",
                                "flows.evaluate.evaluate", "flows.predict.predict", "flows.released.released",
                                "flows.monitor.monitor"]

    store = tmp_path / "store"  # from nothing: the micro suite is trained, captured, fitted, evaluated
    done = _run([tool, "pipeline", "--suite", "micro", "--store", store], elsewhere, env, timeout=1200)
    output = done.stdout + done.stderr
    assert any(line.startswith("Evaluation tokens of nx-l2-d32-h2: ") for line in output.splitlines()), output[-3000:]
    meta = Store(store).partition_metadata("stats", {"model": "nx-l2-d32-h2", "step": 0})
    assert meta["code_hash"] == code_hash() and meta["git_commit"] is None
    assert not (elsewhere / "data").exists()  # --store was honoured
