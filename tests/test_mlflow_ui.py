"""The MLflow UI as a researcher opens it: the link the sweep prints shows every trial, no clicks.

A small sweep's events go to the real `MlflowSink` (sqlite in a temp dir); `mlflow ui`, started
with the command the sweep prints, serves it on 127.0.0.1; headless Chromium opens the link from
`sweep_browse_url` and the test reads the runs table: one row per trial with its arm, seed,
status and metric, and one group row per arm with the arm's mean. A screenshot of the page is
saved in the test's temp dir. Needs selenium and Debian's `chromium` + `chromium-driver`
(`apt-get install chromium chromium-driver`); without them the browser test is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from local_ports import free_port

from orchestrator.sinks.base import TrialOutcome
from orchestrator.sinks.mlflow import MlflowSink
from orchestrator.sinks.mlflow_store import mlflow_ui_command, sweep_browse_url
from orchestrator.sinks.mlflow_view import browse_url

try:
    from sink_scenario import METRIC, curve, feed, scenario
except ImportError:  # tests/ collected as a package
    from tests.sink_scenario import METRIC, curve, feed, scenario

SERVER_START_S = 60
RENDER_S = 30
# Run name -> what its row must show (the scenario's trials plus a second baseline seed).
EXPECTED = {
    "baseline/seed0": {"arm": "baseline", "seed": "0", "status": "completed", METRIC: 0.8},
    "baseline/seed1": {"arm": "baseline", "seed": "1", "status": "completed", METRIC: 0.9},
    "act=relu6/seed0": {"arm": "act=relu6", "seed": "0", "status": "stopped", METRIC: 0.6},
    "act=hs/seed1": {"arm": "act=hs", "seed": "1", "status": "failed", METRIC: 0.7},
}


def _events():
    """The sink scenario (completed, stopped, failed) and a second, better baseline seed."""
    infos, epochs, outcomes = scenario()
    base = infos[0]
    extra = replace(base, key="k_base1", seed=1, config={**base.config, "seed": 1})
    extra_epochs = [(k, e, {**m, METRIC: m[METRIC] + 0.1}) for k, e, m in curve("k_base1", 3)]
    extra_outcome = TrialOutcome("k_base1", "completed", "completed all 3 epochs", 3, 9.0,
                                 final={METRIC: 0.9}, best={METRIC: 0.9}, params=1234,
                                 macs=56789)
    return infos + [extra], epochs + extra_epochs, outcomes + [extra_outcome]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sink = MlflowSink(uri, background=False)
    feed(sink, root / "unit", _events())
    return {"root": root, "uri": uri, "sink": sink}


# -- without a browser: the tags and the link ----------------------------------------------------
def test_experiment_is_model_training_with_the_trials_view(store):
    from mlflow import MlflowClient

    tags = MlflowClient(store["uri"]).get_experiment(store["sink"].experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.trials-by-arm"])
    state = json.loads(view["state"])
    assert view["name"] == "Trials by arm"
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "arm"}]
    assert state["orderByKey"] == f"metrics.`{METRIC}`" and state["orderByAsc"] is False
    url = sweep_browse_url(store["uri"], "unit", base="http://127.0.0.1:5123/")
    assert url == (f"http://127.0.0.1:5123/#/experiments/{store['sink'].experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=trials-by-arm")
    # The link's length does not depend on the number of trials, and it matches the UI command.
    assert sweep_browse_url(store["uri"], "unit").startswith("http://127.0.0.1:5000/#/")
    assert "--port 5000" in mlflow_ui_command(store["uri"])


def test_an_experiment_made_before_the_ui_tags_gets_them_on_start(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # Artifacts in the temp dir: the default location is ./mlruns under the working directory.
    old = client.create_experiment("unit", artifact_location=(tmp_path / "artifacts").as_uri())
    assert sweep_browse_url(uri, "unit", base="http://h") == browse_url(old, "http://h", False)
    feed(MlflowSink(uri, background=False), tmp_path / "unit", ([], [], []))  # start, finish
    tags = client.get_experiment(old).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    url = sweep_browse_url(uri, "unit", base="http://h")
    assert url == browse_url(old, "http://h") and url.endswith("viewStateShareKey=trials-by-arm")


def test_sweep_browse_url_names_a_missing_sweep_and_creates_no_store(tmp_path):
    with pytest.raises(LookupError, match="no MLflow store"):
        sweep_browse_url(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit")
    assert not (tmp_path / "mlflow.db").exists()


def test_an_http_tracking_server_is_its_own_ui(store, monkeypatch):
    from orchestrator.sinks import mlflow_store

    class Client:  # no server here: only the base of the link is under test
        def __init__(self, tracking_uri):
            self.uri = tracking_uri

        def get_experiment_by_name(self, name):
            return type("Exp", (), {"experiment_id": "7", "tags": {}})()

    monkeypatch.setattr("mlflow.MlflowClient", Client)
    assert mlflow_store.sweep_browse_url("http://10.0.0.1:8080", "unit").startswith(
        "http://10.0.0.1:8080/#/experiments/7/runs?workflowType=machine_learning")


# -- in a browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip saying what is missing and how to install it.

    Asked for first, so a skip starts nothing.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = "Chromium" if browser is None else "chromedriver"
        pytest.skip(f"no {missing} on PATH: apt-get install chromium chromium-driver")
    return browser, driver


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children, by its process group."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader


@pytest.fixture
def mlflow_ui(store, tmp_path):
    """`mlflow ui` as the sweep prints it, on a free port: (its process, its base URL)."""
    env_assign, prog, *args = shlex.split(mlflow_ui_command(store["uri"]))
    assert prog == "mlflow"
    args[args.index("--port") + 1] = str(port := free_port())
    key, value = env_assign.split("=", 1)
    with open(tmp_path / "mlflow_ui.log", "wb") as log:
        # Its own session: the uvicorn worker it spawns is stopped with it. cwd: its default
        # artifact folder lands in the temp dir.
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], cwd=store["root"],
                                env={**os.environ, key: value}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            _stop_group(proc)


def _wait_for_server(proc, base, log_path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow ui did not answer in {SERVER_START_S} s:\n{log_path.read_text()}")


@pytest.fixture
def browser(chromium, tmp_path):
    """Headless Chromium under chromedriver, both stopped (by process group) afterwards."""
    binary, chromedriver = chromium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    # --no-sandbox: CI runs as root; the others keep it off the (closed) network.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1920,1080",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(chromedriver, log_output=str(tmp_path / "chromedriver.log"),
                      popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            _stop_group(service.process)


# One JS call returns the table: row index -> {column id -> cell text} (ag-grid renders a row
# as one element per pinned/scrolling part, each with the row's `row-index`).
_READ_TABLE = """
const rows = {};
for (const cell of document.querySelectorAll('[role=row][row-index] [role=gridcell][col-id]')) {
  const i = cell.closest('[row-index]').getAttribute('row-index');
  (rows[i] = rows[i] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
}
return Object.values(rows);
"""
NAME, ARM, SEED, STATUS = (f"{k}.`{v}`" for k, v in (
    ("attributes", "Run Name"), ("tags", "arm"), ("tags", "seed"), ("tags", "status")))
VALUE = f"metrics.`{METRIC}`"


def _trial_rows(driver) -> dict[str, dict[str, str]]:
    return {r[NAME]: r for r in driver.execute_script(_READ_TABLE) if r.get(NAME) in EXPECTED}


def test_the_printed_link_shows_every_trial_with_arm_seed_status_and_metric(
        chromium, store, mlflow_ui, browser, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    proc, base = mlflow_ui
    _wait_for_server(proc, base, tmp_path / "mlflow_ui.log")
    url = sweep_browse_url(store["uri"], "unit", base=base)
    browser.get(url)
    shot = tmp_path / "mlflow_trials.png"
    try:
        WebDriverWait(browser, RENDER_S).until(lambda d: len(_trial_rows(d)) == len(EXPECTED))
    except TimeoutException:
        body = browser.find_element("tag name", "body").text
        pytest.fail(f"{url} did not show the {len(EXPECTED)} trials in {RENDER_S} s "
                    f"(now at {browser.current_url}):\n{body[:3000]}")
    finally:
        browser.save_screenshot(str(shot))

    rows = _trial_rows(browser)
    for name, want in EXPECTED.items():
        row = rows[name]
        assert (row[ARM], row[SEED], row[STATUS]) == (want["arm"], want["seed"], want["status"])
        assert float(row[VALUE]) == pytest.approx(want[METRIC])
    # One group row per arm, with the arm's mean over its seeds.
    groups = {r[NAME].split("Group: ")[1].split("\n")[0]: r[VALUE]
              for r in browser.execute_script(_READ_TABLE) if "Group: " in r.get(NAME, "")}
    assert set(groups) == {"baseline", "act=relu6", "act=hs"}
    assert float(groups["baseline"].split()[0]) == pytest.approx(0.85)
    # The training-runs view (not GenAI's traces), with the metric and tag column headers.
    page = browser.find_element("tag name", "body").text
    assert "workflowType=machine_learning" in browser.current_url and "Traces\n0" not in page
    for header in (METRIC, "arm", "seed", "status"):
        assert f"\n{header}\n" in page
    assert shot.stat().st_size > 10_000
