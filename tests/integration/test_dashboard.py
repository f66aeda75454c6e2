"""The dashboard at ``/``: in a real headless Chromium against a worker, and its JSON on two.

The browser is Debian's ``chromium`` driven through ``chromedriver`` by Selenium (no download:
``make browser-deps`` installs both). Without them the browser test is skipped, saying so. Full
page screenshots at laptop and phone widths are kept in ``test-artifacts/`` (and one of the
page as it was when a step failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from app.api.routing import partition_of
from app.embedded import EmbeddedBroker
from app.times import now_ms
from tests.support import ROOT, WAIT_S, Kafka, Namespace, Worker, create_topics, wait_for

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
LAPTOP, PHONE = 1280, 390


def _executable(name: str, debian_path: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return debian_path if Path(debian_path).is_file() else None


CHROMIUM = _executable("chromium", "/usr/bin/chromium")
CHROMEDRIVER = _executable("chromedriver", "/usr/bin/chromedriver")
_MISSING = [
    name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path
]
needs_browser = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"no headless browser: {' and '.join(_MISSING)} not installed "
    "(Debian: `apt-get install chromium chromium-driver`, or `make browser-deps` as root)",
)


# --- HTTP and Kafka helpers ----------------------------------------------------------------------


def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """One request to a worker: status, headers, JSON body (or text)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def schedule(port: int, job_id: str, target: str, **when: Any) -> None:
    status, _, body = http(port, "POST", "/jobs", {"id": job_id, "target": target, **when})
    assert status == 201, body


def send_bad_records(bootstrap: str, topic: str, keys: list[bytes]) -> None:
    """Ingest records the worker must dead-letter (the target is not a topic name)."""

    async def send() -> None:
        kafka = Kafka(bootstrap)
        await kafka.start()
        try:
            for key in keys:
                headers = [("delayq-target", b"not a topic!"), ("delayq-delay-ms", b"1000")]
                await kafka.send(topic, key, b"x", headers)
        finally:
            await kafka.stop()

    asyncio.run(send())


def key_in(partitions: set[int], prefix: str, count: int) -> str:
    """A job id whose partition is among ``partitions``."""
    for i in range(10_000):
        candidate = f"{prefix}-{i}"
        if partition_of(candidate.encode(), count) in partitions:
            return candidate
    raise AssertionError("no such key")


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM and CHROMEDRIVER
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        # Nothing but the worker resolves: a page that needed a CDN or a font service would break.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={LAPTOP},900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: webdriver.Chrome, condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition of the page (re-rendered elements are looked up again)."""
    WebDriverWait(
        driver,
        WAIT_S,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(lambda _driver: condition(), message=f"timed out waiting for {what}")


def css(driver: webdriver.Chrome, selector: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, selector)


def click(driver: webdriver.Chrome, selector: str) -> None:
    """Click an element once scrolled to the middle of the window (clear of the header).

    Looked up again if the page re-renders it in between (the charts refresh on their own).
    """

    def clicked() -> bool:
        element = css(driver, selector)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        return True

    until(driver, clicked, f"a click on {selector}")


def data(driver: webdriver.Chrome, selector: str, name: str) -> str | None:
    return css(driver, selector).get_attribute(f"data-{name}")


def bar(driver: webdriver.Chrome, chart: str, start_ms: int) -> int | None:
    """The count of the timeline bar starting at ``start_ms`` (None: no such bar yet)."""
    bars = driver.find_elements(By.CSS_SELECTOR, f'#{chart} .bar[data-start="{start_ms}"]')
    return int(bars[0].get_attribute("data-count") or 0) if bars else None


def rows(driver: webdriver.Chrome) -> list[tuple[str, int]]:
    """``(id, due ms)`` of the jobs list as shown."""
    found = driver.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
    return [
        (r.get_attribute("data-id") or "", int(r.get_attribute("data-due") or 0)) for r in found
    ]


def full_page(driver: webdriver.Chrome, width: int, path: Path) -> int:
    """Save the whole page at ``width`` CSS pixels; return its scroll width there."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    until(driver, lambda: driver.execute_script("return innerWidth") == width, f"width {width}")
    scroll_width = int(driver.execute_script("return document.documentElement.scrollWidth"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return scroll_width


@contextlib.contextmanager
def screenshot_on_failure(driver: webdriver.Chrome, worker: Worker) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(WebDriverException):
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "dashboard-failure.png"))
            log = "\n".join(str(e) for e in driver.get_log("browser"))
            (ARTIFACTS / "dashboard-failure.log").write_text(
                f"{log}\n--- worker ---\n{worker.log_since_start()[-20_000:]}"
            )
        raise


def lookup(driver: webdriver.Chrome, job_id: str, state: str) -> None:
    field = css(driver, "#lookup-id")
    field.clear()
    field.send_keys(job_id)
    click(driver, "#lookup-button")
    until(driver, lambda: data(driver, "#lookup-result", "state") == state, f"{job_id}: {state}")


def dialog_open(driver: webdriver.Chrome) -> bool:
    return css(driver, "#cancel-dialog").get_attribute("open") is not None


# --- tests ---------------------------------------------------------------------------------------


@needs_browser
def test_the_dashboard_in_a_browser(
    broker: EmbeddedBroker,
    ns: Namespace,
    start_worker: Callable[..., Worker],
    browser: webdriver.Chrome,
) -> None:
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired, ns.target()], ns.partitions))
    worker = start_worker()
    port = worker.web_port
    base = f"http://127.0.0.1:{port}"
    page = browser

    # The page comes from the worker itself, locked to it by its content security policy
    status, headers, _ = http(port, "GET", "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    for stale in ARTIFACTS.glob("dashboard-failure.*"):
        stale.unlink()
    with screenshot_on_failure(page, worker):
        page.get(base + "/")
        # Given an empty queue, the page shows one worker owning every partition, and warns
        # that none has the standby copy configured (DELAYQ_STANDBY_REPLICAS=1 by default)
        until(page, lambda: css(page, "#standby-warning").is_displayed(), "a standby warning")
        warning = css(page, "#standby-warning")
        assert "standby replicas configured: 1" in warning.text
        assert "partitions without a standby: 0-3" in warning.text
        assert warning.get_attribute("data-partitions") == "0,1,2,3"
        assert data(page, "#cluster-state", "state") == "warn"
        assert css(page, "#cluster-state").text == "standby missing · 1 worker"
        until(page, lambda: data(page, "#pending", "value") == "0", "0 pending")
        until(page, lambda: data(page, "#chart-hours", "total") == "0", "an empty timeline")
        worker_row = css(page, "#workers-table tbody tr")
        assert worker_row.get_attribute("data-status") == "ok"
        assert worker_row.find_element(By.CSS_SELECTOR, ".active").text.split() == list("0123")
        assert len(page.find_elements(By.CSS_SELECTOR, "#partition-map .partition")) == 4

        # When jobs are scheduled: a burst in ten minutes, some in five hours, a page's worth in
        # two days, one due at once
        now = now_ms()
        burst_minute = (now // MINUTE_MS + 10) * MINUTE_MS
        later_hour = (now + 5 * HOUR_MS) // HOUR_MS * HOUR_MS
        for i in range(6):
            schedule(port, f"burst-{i}", ns.target(), at=burst_minute + 20_000 + i)
        for i in range(4):
            schedule(port, f"later-{i}", ns.target(), at=later_hour + 60_000 * i)
        for i in range(30):
            schedule(port, f"page-{i:02d}", ns.target(), at=now + 48 * HOUR_MS + 1000 * i)
        schedule(port, "fire-now", ns.target(), delay="1s")
        # and one due at the epoch (late only from when delayq received it)
        schedule(port, "long-past", ns.target(), at=0)
        # and a record the worker cannot take is sent to the ingest topic
        send_bad_records(broker.bootstrap, ns.ingest, [b"bad-record"])

        # Then the figures follow: two fired, 40 pending, one dead letter with its reason
        until(page, lambda: data(page, "#fired-total", "value") == "2", "2 fired")
        until(page, lambda: data(page, "#pending", "value") == "40", "40 pending")
        until(page, lambda: data(page, "#dead-total", "value") == "1", "1 dead-lettered")
        until(page, lambda: data(page, "#lateness", "p99") not in ("", None), "a lateness")
        # the job due at the epoch is counted apart, not as 56 years of lateness
        until(page, lambda: data(page, "#past-due", "value") == "1", "1 arrived past due")
        assert int(data(page, "#lateness", "p99") or 0) < 15_000
        assert "p99" in (css(page, "#lateness").get_attribute("title") or "")
        until(page, lambda: "bad-record" in css(page, "#dead-letters tbody").text, "the letter")
        assert "not a valid topic name" in css(page, "#dead-letters tbody").text

        # and so does the timeline: the burst in its minute, the rest in their hours
        until(page, lambda: bar(page, "chart-minutes", burst_minute) == 6, "the burst")
        until(page, lambda: bar(page, "chart-hours", later_hour) == 4, "the jobs in 5 hours")
        until(page, lambda: data(page, "#chart-hours", "total") == "40", "40 on the timeline")
        assert data(page, "#chart-minutes", "total") == "6"

        # When a job is looked up, its details show
        lookup(page, "burst-2", "found")
        details = css(page, "#job-details").text
        assert "burst-2" in details
        assert ns.target() in details
        assert "pending" in details
        # and an unknown one is reported missing
        lookup(page, "no-such-job", "missing")

        # When its cancel is not confirmed, the job stays
        lookup(page, "burst-2", "found")
        click(page, "#cancel-button")
        until(page, lambda: dialog_open(page), "the confirmation")
        click(page, "#cancel-keep")
        until(page, lambda: not dialog_open(page), "the confirmation to close")
        assert data(page, "#lookup-result", "state") == "found"
        assert http(port, "GET", "/jobs/burst-2")[0] == 200

        # When it is confirmed, the job is cancelled, and the counts and the timeline follow
        click(page, "#cancel-button")
        until(page, lambda: dialog_open(page), "the confirmation")
        click(page, "#cancel-confirm")
        until(page, lambda: data(page, "#lookup-result", "state") == "cancelled", "cancelled")
        assert http(port, "GET", "/jobs/burst-2")[0] == 404
        until(page, lambda: data(page, "#pending", "value") == "39", "39 pending")
        until(page, lambda: data(page, "#cancelled-total", "value") == "1", "1 cancelled")
        until(page, lambda: bar(page, "chart-minutes", burst_minute) == 5, "a smaller burst")

        # The earliest jobs, a page at a time, in due order
        until(page, lambda: len(rows(page)) == 25, "the first page")
        first = rows(page)
        click(page, "#jobs-next")
        until(page, lambda: css(page, "#jobs-page").text.startswith("page 2"), "page 2")
        until(page, lambda: len(rows(page)) == 14, "the second page")
        second = rows(page)
        assert css(page, "#jobs-next").get_attribute("disabled") is not None
        shown = first + second
        assert [due for _id, due in shown] == sorted(due for _id, due in shown)
        expected = {f"burst-{i}" for i in (0, 1, 3, 4, 5)}
        expected |= {f"later-{i}" for i in range(4)} | {f"page-{i:02d}" for i in range(30)}
        assert {job_id for job_id, _due in shown} == expected
        click(page, "#jobs-prev")
        until(page, lambda: rows(page) and rows(page)[0][0] == first[0][0], "page 1 again")

        # A bar of the timeline lists the jobs from its time on
        click(page, f'#chart-hours .bar[data-start="{later_hour}"]')
        until(page, lambda: rows(page) and rows(page)[0][0] == "later-0", "jobs from the bar")
        click(page, "#jobs-from-clear")
        until(page, lambda: rows(page) and rows(page)[0][0] == "burst-0", "the earliest again")

        # Only the worker was asked for anything, and the page logged no error
        resources = page.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert resources
        assert all(name.startswith(base + "/") for name in resources), resources
        errors = [
            entry["message"]
            for entry in page.get_log("browser")
            if entry["level"] == "SEVERE" and "/jobs/" not in entry["message"]
        ]
        assert errors == []

        # Kept: the page at laptop and phone widths, neither scrolling sideways
        lookup(page, "later-1", "found")
        assert full_page(page, LAPTOP, ARTIFACTS / "dashboard.png") <= LAPTOP
        assert full_page(page, PHONE, ARTIFACTS / "dashboard-phone.png") <= PHONE


@needs_browser
def test_a_recurring_job_is_marked_with_its_rule_in_words(
    broker: EmbeddedBroker,
    ns: Namespace,
    start_worker: Callable[..., Worker],
    browser: webdriver.Chrome,
) -> None:
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired, ns.target()], ns.partitions))
    worker = start_worker()
    port, page = worker.web_port, browser
    # Given a job recurring every hour and a one-shot job, both pending before the page opens
    schedule(port, "hourly", ns.target(), every="1h")
    schedule(port, "once", ns.target(), delay="2h")
    for job_id in ("hourly", "once"):
        wait_for(lambda job_id=job_id: http(port, "GET", f"/jobs/{job_id}")[0] == 200, job_id)
    with screenshot_on_failure(page, worker):
        # When the page shows the earliest jobs
        page.get(f"http://127.0.0.1:{port}/")
        until(page, lambda: [job_id for job_id, _due in rows(page)] == ["hourly", "once"], "2")
        # Then the recurring one is marked, with its rule in words, and the other is not
        hourly = css(page, '#jobs-table tr[data-id="hourly"]')
        assert hourly.get_attribute("data-recurring") == "true"
        assert hourly.find_element(By.CSS_SELECTOR, ".rule").text == "recurring every 1 h"
        once = css(page, '#jobs-table tr[data-id="once"]')
        assert once.get_attribute("data-recurring") is None
        assert not once.find_elements(By.CSS_SELECTOR, ".rule")

        # When it is looked up, its details say how it repeats, and its series can be cancelled
        lookup(page, "hourly", "found")
        assert "Repeats\nevery 1 h" in css(page, "#job-details").text
        assert css(page, "#cancel-button").text == "Cancel series…"
        click(page, "#cancel-button")
        until(page, lambda: dialog_open(page), "the confirmation")
        click(page, "#cancel-confirm")
        until(page, lambda: data(page, "#lookup-result", "state") == "cancelled", "cancelled")
        assert http(port, "GET", "/jobs/hourly")[0] == 404


def cluster_settled(port: int, partitions: int) -> dict[str, Any] | None:
    """``/dashboard/api/cluster`` once two workers are ok and own every partition once."""
    status, _, body = http(port, "GET", "/dashboard/api/cluster")
    if status != 200 or len(body["workers"]) != 2 or body["unowned"]:
        return None
    if any(w["status"] != "ok" or not w["active_partitions"] for w in body["workers"]):
        return None
    actives = sorted(p for w in body["workers"] for p in w["active_partitions"])
    return body if actives == list(range(partitions)) else None


def test_the_dashboard_api_speaks_for_the_whole_cluster(
    broker: EmbeddedBroker, ns: Namespace, start_worker: Callable[..., Worker]
) -> None:
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired], ns.partitions))
    a, b = start_worker("a"), start_worker("b")
    wait_for(lambda: cluster_settled(a.web_port, ns.partitions) is not None, "two workers")

    # Either worker names both, with each one's standby partitions the other's actives
    for port in (a.web_port, b.web_port):
        cluster = cluster_settled(port, ns.partitions)
        assert cluster is not None
        workers = cluster["workers"]
        assert {w["worker"] for w in workers} == {
            f"http://127.0.0.1:{a.web_port}",
            f"http://127.0.0.1:{b.web_port}",
        }
        assert workers[0]["standby_partitions"] == workers[1]["active_partitions"]
        assert workers[1]["standby_partitions"] == workers[0]["active_partitions"]
        assert all(w["recovery"]["actives_ready"] for w in workers)
    owned = {w["worker"]: set(w["active_partitions"]) for w in cluster["workers"]}
    mine = owned[f"http://127.0.0.1:{a.web_port}"]
    theirs = owned[f"http://127.0.0.1:{b.web_port}"]

    # Given 20 jobs due within one minute, ten minutes from now, on both workers' partitions
    minute = (now_ms() // MINUTE_MS + 10) * MINUTE_MS
    ids = [f"fan-{i:02d}" for i in range(20)]
    for i, job_id in enumerate(ids):
        schedule(a.web_port, job_id, "fan-out", at=minute + 1000 * i)
    partitions = {partition_of(job_id.encode(), ns.partitions) for job_id in ids}
    assert partitions & mine and partitions & theirs

    # The timeline of either worker counts them all in their minute
    def timeline(port: int) -> dict[str, Any]:
        status, _, body = http(port, "GET", "/dashboard/api/timeline")
        assert status == 200, body
        return dict(body)

    def counted(port: int) -> bool:
        body = timeline(port)
        index = (minute - body["minute_start_ms"]) // MINUTE_MS
        return body["minutes"][index] == 20 and body["pending"] == 20

    wait_for(lambda: counted(a.web_port) and counted(b.web_port), "20 jobs on the timelines")
    body = timeline(b.web_port)
    assert body["complete"] and body["overdue"] == 0 and body["later"] == 0
    assert sum(body["hours"]) == 20
    assert body["active_partitions"] == list(range(ns.partitions))

    # The earliest jobs come a page at a time in due order, whichever worker holds them
    seen: list[str] = []
    after = ""
    for _page in range(5):
        status, _, page = http(b.web_port, "GET", f"/dashboard/api/jobs?limit=7{after}")
        assert status == 200, page
        seen += [job["id"] for job in page["jobs"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert seen == ids
    # from a time on (a bar of the timeline), and a bad cursor or limit is refused
    status, _, page = http(a.web_port, "GET", f"/dashboard/api/jobs?after={minute + 10_000}")
    assert [job["id"] for job in page["jobs"]] == ids[10:]
    assert http(a.web_port, "GET", "/dashboard/api/jobs?after=soon")[0] == 422
    assert http(a.web_port, "GET", "/dashboard/api/jobs?limit=0")[0] == 422

    # Dead letters of both workers, merged, newest first, on either
    keys = [key_in(mine, "bad-a", ns.partitions), key_in(theirs, "bad-b", ns.partitions)]
    send_bad_records(broker.bootstrap, ns.ingest, [k.encode() for k in keys])

    def letters(port: int) -> list[dict[str, Any]]:
        status, _, body = http(port, "GET", "/dashboard/api/dead-letters")
        return list(body["dead_letters"]) if status == 200 else []

    wait_for(lambda: {d["key"] for d in letters(b.web_port)} == set(keys), "both dead letters")
    merged = letters(a.web_port)
    assert len({d["worker"] for d in merged}) == 2
    assert [d["at_ms"] for d in merged] == sorted((d["at_ms"] for d in merged), reverse=True)
    assert all("not a valid topic name" in d["reason"] for d in merged)


def test_a_stopped_worker_leaves_partitions_without_standby_and_health_warns(
    broker: EmbeddedBroker, ns: Namespace, start_worker: Callable[..., Worker]
) -> None:
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired], ns.partitions))
    # Given two workers with one standby replica each partition (configured explicitly)
    a = start_worker("a", DELAYQ_STANDBY_REPLICAS="1")
    b = start_worker("b", DELAYQ_STANDBY_REPLICAS="1")
    wait_for(lambda: cluster_settled(a.web_port, ns.partitions) is not None, "two workers")
    # Every partition has its standby: neither view warns
    cluster = cluster_settled(a.web_port, ns.partitions)
    assert cluster is not None
    assert (cluster["warnings"], cluster["without_standby"]) == ([], [])
    assert a.health()["warnings"] == []

    # When one worker stops
    b.stop()

    # Then the one left says, with its status still ok (degraded, not down), that no
    # partition has a standby any more
    def warned() -> dict[str, Any] | None:
        health = a.health()
        ok = health.get("status") == "ok" and "http_status" not in health
        return health if ok and health.get("warnings") else None

    wait_for(lambda: warned() is not None, "a standby warning in /health")
    health = warned()
    assert health is not None
    assert health["active_partitions"] == list(range(ns.partitions))
    (warning,) = health["warnings"]
    assert warning.startswith("standby replicas configured: 1, partitions without a standby: 0-3")
    assert "fail-over will restore them from the changelog" in warning
    # and so does its dashboard, from every worker's own account of its standbys
    status, _, cluster = http(a.web_port, "GET", "/dashboard/api/cluster")
    assert status == 200, cluster
    assert cluster["without_standby"] == list(range(ns.partitions))
    assert cluster["warnings"] == health["warnings"]
