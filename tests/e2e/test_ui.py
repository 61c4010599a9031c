"""End to end: a real `dagster dev` over a small instance, driven by headless Chromium.

The upstream of `curated[full|de]` and one tiny scored experiment run with its reports are
materialised in-process through the named jobs (fixture `e2e_home`); the test then opens the
asset graph, launches the `per_language_governance` job (deduplicated -> quality_scored ->
curated) for that one language partition through the UI's GraphQL endpoint, waits for the run,
checks its metadata and asset checks, then checks what a user looks for: named runs with tags,
sample rejected rows on a stage, the data version and checks of the model, a report's plot
inline; it screenshots each, and finally stops `dagster dev` with SIGTERM and checks that
nothing of it is left.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

JOB = "per_language_governance"  # pipelines/jobs.py: the per-language stages of a partition
RUN_TIMEOUT_S = 300
PAGE_TIMEOUT_S = 90
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""

RUN_STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status tags { key value } } }
}"""

RUN_EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on MaterializationEvent {
          assetKey { path }
          partition
          metadataEntries {
            label
            ... on IntMetadataEntry { intValue }
            ... on FloatMetadataEntry { floatValue }
          }
        }
        ... on AssetCheckEvaluationEvent {
          evaluation { checkName success assetKey { path } }
        }
      }
    }
  }
}"""

RUNS = """
query Runs {
  runsOrError(limit: 200) {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
  }
}"""

ASSET_CHECKS = """
query Checks($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetChecksOrError { __typename ... on AssetChecks { checks { name blocking } } }
  }
}"""


def _body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for_text(driver, *needles: str, timeout: float = PAGE_TIMEOUT_S) -> str:
    """Until every needle is rendered on the page; returns the page text."""
    from selenium.webdriver.support.ui import WebDriverWait

    found: dict[str, str] = {}

    def ready(d) -> bool:
        text = _body_text(d)
        found["text"] = text
        return all(n in text for n in needles)

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)
    except Exception as exc:  # TimeoutException: say what was on the page instead
        raise AssertionError(
            f"{driver.current_url}: {needles} not rendered after {timeout} s; page text:\n"
            f"{found.get('text', '')[:3000]}"
        ) from exc
    time.sleep(1.5)  # let the graph layout and fit-to-view animation settle before a screenshot
    return _body_text(driver)


def _scroll_to(driver, text: str) -> None:
    """Bring the first element whose own text is ``text`` (a metadata key) into view."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
    if found:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", found[0])
        time.sleep(0.5)


def _screenshot(driver, name: str, artifact_dirs: list[Path]) -> Path:
    first = artifact_dirs[0] / name
    assert driver.save_screenshot(str(first)), f"screenshot {name} failed"
    for folder in artifact_dirs[1:]:
        shutil.copy(first, folder / name)
    return first


def _launch_partition_run(dev, partition_key: str, dimensions: dict[str, str]) -> str:
    tags = [{"key": "dagster/partition", "value": partition_key}]
    tags += [{"key": f"dagster/partition/{dim}", "value": v} for dim, v in dimensions.items()]
    params = {
        "selector": {
            "repositoryLocationName": dev.location,
            "repositoryName": "__repository__",
            "jobName": JOB,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": tags},
    }
    result = dev.graphql(LAUNCH, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _wait_for_run(dev, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = dev.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in TERMINAL:
            return run
        time.sleep(1)
    pytest.fail(f"run {run_id} not finished after {RUN_TIMEOUT_S} s:\n{dev.log_tail()}")


def _metadata(event: dict) -> dict[str, float]:
    values = {}
    for entry in event["metadataEntries"]:
        value = entry.get("intValue", entry.get("floatValue"))
        if value is not None:
            values[entry["label"]] = value
    return values


def test_materialise_one_language_partition_from_the_ui(
    e2e_home, dagster_dev, browser, artifact_dirs
):
    dev, driver = dagster_dev, browser
    started = time.monotonic()

    # 1. the asset graph: the global lineage shows the groups, the governance group its assets
    driver.get(f"{dev.url}/asset-groups")
    _wait_for_text(driver, "Global asset lineage", "governance", "quality_models", "training")
    _screenshot(driver, "01_global_asset_lineage.png", artifact_dirs)
    driver.get(f"{dev.url}/locations/{dev.location}/asset-groups/governance")
    _wait_for_text(driver, "curated", "quality_scored", "deduplicated", "language_id")
    _screenshot(driver, "02_governance_graph_before.png", artifact_dirs)
    driver.get(f"{dev.url}/assets/curated")
    _wait_for_text(driver, "curated", "Latest materialization", "per_language_governance")

    # 2. launch one language partition through the UI's GraphQL endpoint and wait for it
    partition = e2e_home.partition_key
    run_id = _launch_partition_run(
        dev, partition, {"variant": e2e_home.variant, "lang": e2e_home.lang}
    )
    run = _wait_for_run(dev, run_id)
    events = dev.graphql(RUN_EVENTS, {"runId": run_id})["logsForRun"]["events"]
    if run["status"] != "SUCCESS":
        messages = "\n".join(e.get("message") or "" for e in events)[-4000:]
        pytest.fail(f"run {run_id} ended {run['status']}:\n{messages}\n{dev.log_tail()}")
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == partition

    # 3. metadata of the run's materialisations: every governance stage balances its ledger
    mats = {
        e["assetKey"]["path"][-1]: e for e in events if e["__typename"] == "MaterializationEvent"
    }
    assert set(mats) == {"deduplicated", "quality_scored", "curated"}, set(mats)
    assert all(m["partition"] == partition for m in mats.values())
    for stage in ("deduplicated", "quality_scored"):
        meta = _metadata(mats[stage])
        assert {"input", "kept", "rejected"} <= set(meta), (stage, meta)
        assert meta["kept"] + meta["rejected"] == meta["input"], (stage, meta)
        assert meta["kept"] > 0 and meta["dagster/row_count"] == meta["kept"], (stage, meta)
    assert _metadata(mats["deduplicated"])["kept"] == _metadata(mats["quality_scored"])["input"]
    curated = _metadata(mats["curated"])
    documents = int(curated["documents"])
    assert documents == curated["dagster/row_count"] == _metadata(mats["quality_scored"])["kept"]
    written = e2e_home.govtune_home / "curated" / e2e_home.variant / f"{e2e_home.lang}.parquet"
    assert pq.read_metadata(written).num_rows == documents  # dagster dev used the tmp data root

    # 4. asset checks: every check defined on the run's assets was evaluated in it and passed
    keys = [{"path": [name]} for name in sorted(mats)]
    defined = {
        (node["assetKey"]["path"][-1], check["name"])
        for node in dev.graphql(ASSET_CHECKS, {"keys": keys})["assetNodes"]
        for check in node["assetChecksOrError"].get("checks", [])
    }
    assert {("deduplicated", "ledger_balances"), ("quality_scored", "ledger_balances")} <= defined
    evaluated = {
        (e["evaluation"]["assetKey"]["path"][-1], e["evaluation"]["checkName"]):
            e["evaluation"]["success"]
        for e in events
        if e["__typename"] == "AssetCheckEvaluationEvent"
    }  # fmt: skip
    assert set(evaluated) == defined, (evaluated, defined)
    assert all(evaluated.values()), evaluated

    # 5. the browser sees it: reload the asset page, then the graph of curated's upstream
    driver.refresh()
    _wait_for_text(driver, "Row count", "documents", "quality_buckets", str(documents), partition)
    _screenshot(driver, "03_curated_asset.png", artifact_dirs)
    driver.get(f"{dev.url}/assets/curated?view=partitions&partition={quote(partition)}")
    _wait_for_text(driver, "Materialized (1)", "quality_buckets", str(documents))
    _screenshot(driver, "04_curated_partitions.png", artifact_dirs)
    driver.get(f"{dev.url}/assets/curated?view=lineage&lineageScope=upstream&lineageDepth=3")
    _wait_for_text(driver, "quality_scored", "deduplicated", "kenlm_models", "1 / 1 Passed")
    _screenshot(driver, "05_asset_graph_after.png", artifact_dirs)
    for folder in artifact_dirs:
        for name in ("01_global_asset_lineage.png", "03_curated_asset.png",
                     "05_asset_graph_after.png"):  # fmt: skip
            assert (folder / name).stat().st_size > 10_000, folder / name

    # 6. named runs with tags: every run is a named job (never __ephemeral_asset_job__)
    runs = dev.graphql(RUNS, {})["runsOrError"]["results"]
    jobs = {r["jobName"] for r in runs}
    assert {"per_language_governance", "language_identification", "train_and_score",
            "build_reports"} <= jobs, jobs  # fmt: skip
    assert "__ephemeral_asset_job__" not in jobs
    (training,) = [r for r in runs if r["jobName"] == "train_and_score"]
    tags = {t["key"]: t["value"] for t in training["tags"]}
    assert {k: tags.get(k) for k in ("govtune/variant", "govtune/method", "govtune/seed",
            "govtune/experiment", "govtune/stage")} == {
        "govtune/variant": "full", "govtune/method": "lora", "govtune/seed": "0",
        "govtune/experiment": "e2e", "govtune/stage": "training"}  # fmt: skip
    driver.get(f"{dev.url}/runs")
    _wait_for_text(driver, "train_and_score", "per_language_governance", "build_reports")
    _screenshot(driver, "06_named_runs.png", artifact_dirs)

    # 7. a stage page shows sample rejected rows with their reasons, and its ledger file
    driver.get(f"{dev.url}/assets/deduplicated")
    _wait_for_text(driver, "rejected_sample", "exact_duplicate", "ledger_file", "doc_id")
    _scroll_to(driver, "rejection_reasons")
    _screenshot(driver, "07_stage_rejected_sample.png", artifact_dirs)

    # 8. the model: the partition and data version it trained on, and its checks
    driver.get(f"{dev.url}/assets/finetune")
    _wait_for_text(driver, "trained_on", "classification_train[full]", "data_version", "sha256:")
    _scroll_to(driver, "trained_on")
    _screenshot(driver, "08_finetune_data_version.png", artifact_dirs)
    driver.get(f"{dev.url}/assets/finetune?view=checks")
    _wait_for_text(driver, "loss_finite", "adapter_saved", "data_version_recorded")
    _screenshot(driver, "09_finetune_checks.png", artifact_dirs)

    # 9. a report asset shows its plot inline, without opening a modal
    driver.get(f"{dev.url}/assets/table_accuracy_parity")
    _wait_for_text(driver, "glance", "accuracy")
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, 'img[src^="data:image/png;base64,"]')
    widths = [driver.execute_script("return arguments[0].naturalWidth", i) for i in images]
    assert images and max(widths) > 0, "no inline plot rendered on the report asset"
    _screenshot(driver, "10_report_inline_plot.png", artifact_dirs)

    # 10. SIGTERM to the process group stops dagster dev and everything it started
    stop_started = time.monotonic()
    left = dev.stop()
    assert left == [], "processes left after SIGTERM:\n" + "\n".join(left)
    assert dev.proc.returncode is not None
    print(
        f"e2e: run {run_id}: {documents} curated documents; UI + run + stop "
        f"{time.monotonic() - started:.0f} s (stop {time.monotonic() - stop_started:.1f} s)"
    )
