"""End to end through the Prefect UI: `prefect server start`, `deployments/serve.py`, headless Chromium.

Retries a failed deployment run with `prefect flow-run retry`, then fills the capture deployment's
run form, submits it, checks the run completes and its output lands in the store, and that the
run's Artifacts tab shows its summary table and figure. Screenshots
go to test-artifacts/ when it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.artifacts import THUMBNAIL_WIDTH
from massive_activations.store import Store
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _submit(page):
    """Click the run form's Submit and return the server's answer to the flow run it asks for."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run"),
                              timeout=120_000) as answer:
        page.get_by_role("button", name="Submit").click()
    return answer.value


@pytest.mark.ui
def test_run_a_deployment_from_the_ui(micro_suite, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "chromium is missing: `make test` installs it (apt-get install -y chromium)"
    store = Store(tmp_path / "store")  # the micro suite is copied in only after a first run has failed
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MA_STORE": store.url, "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_PROFILES_PATH", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, cwd=tmp_path, stdout=open(logs / "server.log", "w"),
                              stderr=subprocess.STDOUT)
    serve = None
    try:
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server")
        serve = subprocess.Popen([sys.executable, str(ROOT / "deployments" / "serve.py")], env=env, cwd=ROOT,
                                 stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT)
        deployments = _wait(lambda: {d["name"]: d["id"] for d in
                                     httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
                                     if d["name"] == "capture"}, 120, "serve.py's deployments")
        # A run that fails (no suite on the store yet), then `prefect flow-run retry` once the suite is there.
        prefect = [str(Path(sys.executable).parent / "prefect")]
        started = subprocess.run([*prefect, "deployment", "run", "capture/capture", "--param", "suite=micro",
                                  "--param", 'steps="48"'], env=env, cwd=ROOT, capture_output=True, text=True,
                                 check=True)
        first = started.stdout.split("flow-run/")[1].split()[0]
        state_of = lambda run: httpx.get(f"{api}/flow_runs/{run}", timeout=5).json()  # noqa: E731
        _wait(lambda: state_of(first)["state"]["type"] in ("FAILED", "CRASHED"), 120, "the first run to fail")
        shutil.copytree(Path(micro_suite.root) / "suites", tmp_path / "store" / "suites")
        subprocess.run([*prefect, "flow-run", "retry", first], env=env, cwd=ROOT, check=True, capture_output=True)
        _wait(lambda: state_of(first)["state"]["type"] == "COMPLETED", 180, "the retried run")
        assert state_of(first)["run_count"] == 2

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            try:
                page.goto(f"http://127.0.0.1:{port}/deployments/deployment/{deployments['capture']}/run",
                          wait_until="networkidle")
                for name, value in (("suite", "micro"), ("steps", "48")):
                    field = page.locator("div.p-label", has=page.get_by_text(f"{name} (Optional)", exact=True))
                    field.locator("textarea, input").first.fill(value)
                created = _submit(page)
                if not created.ok:  # a write the busy server failed ("Oops. Something went wrong."): a user retries
                    print(f"Submit answered {created.status}: {created.text()[:500]}; submitting again")
                    created = _submit(page)
                assert created.ok, (created.status, created.text()[:2000])
                run_id = created.json()["id"]
                runs = [r["id"] for r in httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
                    "deployments": {"id": {"any_": [deployments["capture"]]}}}).json() if r["id"] != first]
                assert runs == [run_id]
                state = _wait(lambda: (lambda s: s if s in ("COMPLETED", "FAILED", "CRASHED") else None)(
                    httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]), 240, "the run")
                run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()
                assert state == "COMPLETED", (logs / "serve.log").read_text()[-3000:]
                assert run["parameters"]["steps"] == "48" and run["parameters"]["suite"] == "micro"
                page.goto(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}", wait_until="networkidle")
                page.get_by_text("Completed").first.wait_for(timeout=30_000)
                # The run's Artifacts tab: the capture summary renders as a table and a figure.
                page.locator("li.p-tab#artifacts").click()
                page.get_by_text("capture-summary", exact=True).click()
                page.locator("table td").first.wait_for(timeout=30_000)
                cells = page.locator("table td").all_inner_texts()
                assert cells == ["captured", "0", "skipped", "2", "failed", "0"], cells  # the retried run captured
                figure = page.locator("img[src^='data:image/png']")
                figure.first.wait_for(timeout=30_000)
                assert figure.first.evaluate("i => i.complete && i.naturalWidth") == THUMBNAIL_WIDTH
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "ui-run-failure.png"), full_page=True)
                shutil.copytree(logs, ARTIFACTS / "ui-logs", dirs_exist_ok=True)
                raise
            finally:
                browser.close()
    finally:
        if serve is not None:
            _stop(serve)  # serve before the server
        _stop(server)
    stats = store.read_dataset("stats")
    assert set(zip(stats.column("model").to_pylist(), stats.column("step").to_pylist(), strict=True)) == {
        ("nx-l2-d32-h2", 48), ("nx-l3-d32-h4", 48)}
