"""Fixtures for the browser end-to-end test: Debian's Chromium + chromedriver, a real
``dagster dev`` over a temporary data root and Dagster instance, and a headless browser.

Nothing here is mocked. The fixtures fail loudly (never skip) when something they need cannot be
set up: the CI machine can install Chromium with apt.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1600, 1000)
# the curated partition the test materialises (variant x language, assets/partitions.py)
VARIANT, LANG = "full", "de"
SERVER_TIMEOUT_S = 120


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the Dagster UI in a real browser")


# ---------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="session")
def artifact_dirs(tmp_path_factory) -> list[Path]:
    """Screenshots go to the pytest tmp dir and to ``.govtune/e2e/`` (or $GOVTUNE_E2E_ARTIFACTS)."""
    keep = Path(os.environ.get("GOVTUNE_E2E_ARTIFACTS") or REPO / ".govtune" / "e2e")
    keep.mkdir(parents=True, exist_ok=True)
    return [tmp_path_factory.mktemp("e2e_artifacts"), keep]


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    """Install Debian's chromium + chromium-driver when missing (scripts/install_chromium.sh)."""
    script = REPO / "scripts" / "install_chromium.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0 or not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(
            f"could not install chromium + chromium-driver with {script} (exit {proc.returncode});"
            f" the e2e test needs {CHROMIUM} and {CHROMEDRIVER}.\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}",
            pytrace=False,
        )


@pytest.fixture
def browser(chromium_installed, tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # the dev extra was not installed
        pytest.fail(f"selenium is missing ({exc}): pip install -c constraints.txt -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------- data + instance


@dataclass
class E2EHome:
    govtune_home: Path
    dagster_home: Path
    variant: str
    lang: str

    @property
    def partition_key(self) -> str:
        from assets.partitions import multi_key

        return str(multi_key(self.variant, self.lang))


# the tiny experiment behind the report and model checks the e2e test looks at (the tiny random
# model, synthetic task files where classification_train would write them)
E2E_PLAN = {
    "experiment": "e2e",
    "finetune": {"model": "tiny", "steps": 3, "batch_size": 8, "lr": 0.01,
                 "train_langs": ["en", "de", "fr"], "eval_max_examples": 8},
    "evaluation": {"test_per_lang": 4, "dev_per_lang": 4, "robustness_items": 2,
                   "robustness_perturbations": ["case"], "max_new_tokens": 4},
    "report": {"n_boot": 100},
}  # fmt: skip
E2E_RUN = "lora-s0"


def _synthetic_task_files(root: Path) -> None:
    import pyarrow as pa

    from quality_models.contract import write_parquet_atomic
    from training.data import synthetic_classification_records, synthetic_translation_records

    cls = pa.Table.from_pylist(synthetic_classification_records(n_per_class=12))
    write_parquet_atomic(cls, root / "tasks" / "classification.parquet")
    write_parquet_atomic(cls, root / "tasks" / "train" / VARIANT / "trainer_data.parquet")
    mt = synthetic_translation_records(n=24)
    write_parquet_atomic(pa.Table.from_pylist(mt), root / "tasks" / "translation.parquet")


@pytest.fixture
def e2e_home(tmp_path) -> E2EHome:
    """A tmp GOVTUNE_HOME + DAGSTER_HOME (the repo's dagster.yaml) holding everything upstream of
    `curated[full|de]` and one tiny scored experiment run with its reports, materialised
    in-process through the named jobs `govtune demo` launches, so the Runs page lists them."""
    import dagster as dg

    from assets.ingest import DEMO_SOURCE, source_partitions
    from assets.partitions import multi_key, run_partitions, variant_run_key
    from assets.resources import GovtuneHome
    from assets.stage_io import GovernanceSettings
    from pipelines.definitions import defs
    from pipelines.experiment import REPORT_ASSETS, ExperimentPlan, _op_config
    from pipelines.runner import materialize_partitions

    home = E2EHome(tmp_path / "govtune", tmp_path / "govtune" / "dagster", VARIANT, LANG)
    home.dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home.dagster_home / "dagster.yaml")
    resources = {
        **defs.resources,
        "home": GovtuneHome(root=str(home.govtune_home)),
        "governance": GovernanceSettings(),
    }
    plan = ExperimentPlan(**E2E_PLAN)
    config = plan.run_config()
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
        for selection, partition in (
            ("demo_corpus", None),
            ("raw_documents", DEMO_SOURCE),
            ("normalized", None),
            ("language_id", VARIANT),
            ("kenlm_models", LANG),
        ):
            materialize_partitions(defs, instance, selection, [partition], resources=resources)
        materialize_partitions(
            defs, instance, ["deduplicated", "quality_scored"], [multi_key(VARIANT, LANG)],
            resources=resources,
        )  # fmt: skip
        _synthetic_task_files(home.govtune_home)
        instance.add_dynamic_partitions(run_partitions.name, [E2E_RUN])
        ops = ["finetune", "model_evaluation"]
        materialize_partitions(
            defs, instance, ops, [variant_run_key(VARIANT, E2E_RUN)],
            run_config=_op_config(config, ops), resources=resources,
        )  # fmt: skip
        materialize_partitions(
            defs, instance, REPORT_ASSETS, [None],
            run_config=_op_config(config, ["reports"]), resources=resources,
        )  # fmt: skip
    return home


# ---------------------------------------------------------------------------- dagster dev


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes whose process group is ``pgid``, as 'pid cmdline'."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:160]}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found


@dataclass
class DagsterDev:
    proc: subprocess.Popen
    url: str
    log_path: Path
    location: str = ""
    stopped: bool = field(default=False)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        resp.raise_for_status()
        body = resp.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_ready(self, timeout: float = SERVER_TIMEOUT_S) -> None:
        """Until the webserver answers and the code location has loaded."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                requests.get(f"{self.url}/server_info", timeout=5).raise_for_status()
                data = self.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
                    " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )
                entries = data["workspaceOrError"]["locationEntries"]
                errors = [e for e in entries if e["locationOrLoadError"]
                          and e["locationOrLoadError"]["__typename"] == "PythonError"]  # fmt: skip
                if errors:
                    pytest.fail(f"code location failed to load: {errors}\n{self.log_tail()}")
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    self.location = entries[0]["name"]
                    return
                last = f"locations {entries}"
            except (requests.RequestException, AssertionError, KeyError, TypeError) as exc:
                last = repr(exc)
            time.sleep(1)
        pytest.fail(f"dagster dev not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 60) -> list[str]:
        """SIGTERM to the whole process group; returns the group's processes left after
        ``timeout`` (then SIGKILLed), so a clean shutdown returns []."""
        if self.stopped:
            return []
        self.stopped = True
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        left = _group_members(pgid)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _group_members(pgid)
        if left:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        return left


@pytest.fixture
def dagster_dev(e2e_home, tmp_path):
    """``dagster dev`` on 127.0.0.1:<free port> over the e2e home, in its own session."""
    port = _free_port()
    env = {
        **os.environ,
        "GOVTUNE_HOME": str(e2e_home.govtune_home),
        "DAGSTER_HOME": str(e2e_home.dagster_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    bin_dir = Path(sys.executable).parent
    log_path = tmp_path / "dagster_dev.log"
    # As `make ui`: a new session (one process group to signal) and default INT/TERM handlers,
    # because a parent may have left them ignored and the children would inherit that.
    cmd = [
        "env", "--default-signal=INT,TERM",
        str(bin_dir / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
        "-m", "pipelines.definitions",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    dev = DagsterDev(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        dev.wait_ready()
        yield dev
    finally:
        left = dev.stop()
        if left:  # the test itself asserts a clean stop; this catches a failure before that
            pytest.fail("dagster dev left processes behind (SIGKILLed):\n" + "\n".join(left))
