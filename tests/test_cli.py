"""Every flow module's command line, run as a user runs it: `python -m flows.<name>` in a subprocess."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli, command
from massive_activations.store import Store

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"pipeline": "pipeline", "offline_suite": "offline_suite", "capture": "capture", "fit": "fit",
         "regress": "regress", "predict": "predict", "evaluate": "evaluate", "monitor": "monitor"}
MODEL = "nx-l2-d32-h2"


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
            **extra}


def _run_all(commands: list[list[str]], env: dict | None = None, timeout: float = 300) -> list:
    """Start every command at once (each imports torch and Prefect: seconds apiece), then collect them."""
    procs = [subprocess.Popen([sys.executable, "-m", *c], cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *o) for p, o in zip(procs, outputs, strict=True)]


def test_every_flow_module_has_a_cli_with_the_forms_options():
    """`--help` of each module lists every field of the parameter schema the UI renders as its form."""
    results = _run_all([[f"flows.{m}", "--help"] for m in FLOWS])
    for (module, attr), (code, out, err) in zip(FLOWS.items(), results, strict=True):
        assert code == 0, (module, err[-500:])
        flow = getattr(importlib.import_module(f"flows.{module}"), attr)
        schema = flow.parameters.model_dump()
        assert out.startswith(f"usage: python -m flows.{module} "), (module, err[-500:])
        for opt in cli.options(flow):
            shown = opt.path[0].upper() if opt.positional else opt.flag
            assert shown in out, (module, shown)
        flags = {o.path[0] for o in cli.options(flow)}
        assert flags == set(schema["properties"]), module  # no form field without an option, and back
        assert "--json" in out and "--debug" in out


@pytest.mark.parametrize(("args", "says"), [
    (["flows.capture", "--prompts-n-sequences", "0", "--batch-size", "zero"],
     ["--prompts-n-sequences: Input should be greater than or equal to 1 (got '0')",
      "--settings-batch-size: Input should be a valid integer"]),
    (["flows.pipeline", "--until", "nope"], ["argument --until: invalid choice: 'nope'"]),
    (["flows.pipeline", "--evaluations", "sae,foo"], ["--evaluations: Input should be 'sae', 'itda' or 'quant' "
                                                      "(got 'foo')"]),
    (["flows.predict", "--architecture", "pythia-70m", "--n-layers", "3"],
     ["give either --architecture or its fields --architecture-n-layers, not both"]),
    (["flows.monitor"], ["the following arguments are required: CHECKPOINTS"]),
    (["flows.monitor", "/runs/x", "--stor", "y"], ["unrecognized arguments: --stor y"]),
    # values the checks before any server judge (--verbose: a server's start-up lines would show)
    (["flows.pipeline", "--store", "s3://My_Bucket!/x", "--verbose"], ["invalid S3 bucket name 'My_Bucket!'"]),
    (["flows.capture", "--suite", "nano", "--verbose"], ["unknown offline suite 'nano'; valid: default, micro"]),
    (["flows.pipeline", "--suite", "micro", "--models", "nx-l2-d32-h2,pythia-70m", "--verbose"],
     ["unknown model 'pythia-70m' of offline suite 'micro'; it has nx-l2-d32-h2, nx-l3-d32-h4"]),
    (["flows.capture", "--suite", "micro", "--steps", "0,5", "--verbose"], ["step 5 is not on the schedule"]),
    (["flows.capture", "--source-kind", "hub", "--models", "pythia-71m", "--verbose"],
     ["unknown Pythia model 'pythia-71m'"]),
    (["flows.predict", "--n-layers", "-2"],
     ["error: --architecture-n-layers: Input should be greater than or equal to 1 (got '-2')\n"]),
])
def test_bad_input_is_one_line_and_exit_code_2_before_anything_starts(args, says):
    [(code, out, err)] = _run_all([args])
    assert code == 2
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and all(s in err for s in says), err


def test_a_flow_command_line_answers_without_loading_the_model_code():
    """A bad flag or --help is answered before transformers' modeling code is imported (7 of the 18 s
    a bad flag took on an idle 2-core machine): the flows load it only with a model."""
    modules = sorted(module for module, _ in command.FLOWS.values())  # every flow the console command runs
    done = subprocess.run([sys.executable, "-c", "import sys, importlib; "
                           f"[importlib.import_module('flows.' + m) for m in {modules!r}]; "
                           "print(*sorted(m for m in sys.modules if m.startswith('transformers.modeling')))"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [], done.stdout


def test_bad_input_found_by_the_run_is_one_line_without_traceback_unless_debug(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = _env(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_LOGGING_LEVEL="INFO")
    (code, out, err), (debug_code, _, debug_err) = _run_all(
        [["flows.capture", "--store", "ftp://x"], ["flows.capture", "--store", "ftp://x", "--debug"]], env)
    assert code == 2 and "Traceback" not in err + out, err
    assert ("error: unsupported store URL scheme 'ftp' in 'ftp://x'; use one of: file://, s3:// or a plain path"
            in err.splitlines())
    assert debug_code == 1 and "Traceback" in debug_err and "StoreConfigError" in debug_err


def test_a_failed_run_exits_1_and_results_print_for_people_or_as_json(prefect_server, micro_root, tmp_path):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path / "suite"
    for step in (0, 8):
        shutil.copytree(micro_root / MODEL / f"step{step}", root / MODEL / f"step{step}")
    (root / MODEL / "step8" / "model.safetensors").write_bytes(b"not a safetensors file")
    store = Store(tmp_path / "store")
    base = ["flows.capture", "--models", MODEL, "--store", store.url, "--root", str(root), "--suite", "micro",
            "--n-sequences", "2", "--length", "16", "--samples-per-layer", "4", "--device", "cpu"]
    env = _env(PREFECT_API_URL=PREFECT_API_URL.value())
    [(code, out, err)] = _run_all([[*base, "--steps", "0,8"]], env)
    assert code == 1, err[-2000:]
    assert any(line.startswith("error: the run failed: 1 of 2 checkpoints failed") for line in err.splitlines()), err
    assert "Traceback" not in err
    (json_code, json_out, _), (code, out, err) = _run_all([[*base, "--steps", "0", "--json"], [*base, "--steps", "0"]],
                                                          env)
    assert json_code == code == 0, err[-2000:]
    assert json.loads(json_out) == {"captured": 0, "skipped": 1, "failed": [], "figure": "plots/ratios.png"}
    assert out.splitlines() == ["captured 0, skipped (already on the store) 1, failed 0",
                                f"data: {store.url_for('ratios')}", f"figure: {store.url_for('plots/ratios.png')}"]


def test_monitor_cli_writes_to_the_store_it_is_given(prefect_server, micro_root, tmp_path):
    """`--store` is honoured (the default store, here MA_STORE, is left untouched)."""
    from prefect.settings import PREFECT_API_URL

    run = tmp_path / "runs" / "my-run"
    steps = sorted(int(p.name[4:]) for p in (micro_root / MODEL).glob("step*"))[:3]
    for step in steps:
        shutil.copytree(micro_root / MODEL / f"step{step}", run / f"step{step}")
    store, default = Store(tmp_path / "store"), tmp_path / "default-store"
    env = _env(PREFECT_API_URL=PREFECT_API_URL.value(), MA_STORE=str(default))
    [(code, out, err)] = _run_all([["flows.monitor", str(run), "--store", store.url, "--n-sequences", "2",
                                    "--length", "16", "--device", "cpu"]], env)
    assert code == 0, err[-2000:]
    assert out.strip() == ("my-run: 3 checkpoints, 3 new (skipped 0); waiting for 6 checkpoints before the first "
                           "forecast")
    assert sorted(p["step"] for p in store.partitions("ratios")) == steps
    assert not default.exists()


def test_exit_codes_follow_the_cause_not_the_exception_type(prefect_server, capsys):
    """BadInputError, wherever raised, is exit 2; any other error (scikit-learn's ValueError included)
    is a failed run, exit 1; each is printed once."""
    from prefect import flow

    from massive_activations.errors import BadInputError

    @flow(name="cli-exit-codes")
    def broken(cause: str = "bad") -> dict:
        """Fails as told."""
        raise BadInputError("bad value 'x'") if cause == "bad" else ValueError("Input contains NaN.")

    try:
        assert cli.run(broken, lambda r, p: "", ["--cause", "bad"]) == cli.EXIT_BAD_INPUT
        assert capsys.readouterr().err.splitlines()[-1] == "error: bad value 'x'"
        assert cli.run(broken, lambda r, p: "", ["--cause", "internal"]) == cli.EXIT_FAILED
        assert capsys.readouterr().err.splitlines()[-1] == "error: the run failed: Input contains NaN."
    finally:
        cli._console(verbose=True, debug=True)  # the console as Prefect set it, for the tests after this one
