"""What optuna-dashboard shows of a crest study, checked in its own code and in a real browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crest.report import (
    dashboard_feasibility_mismatches,
    read_study_note,
    write_report,
    write_study_note,
)
from crest.report._dashboard import NOTE_VERSION_KEY, sweep_note
from crest.storage import Store

from ._shared import Swept

pytestmark = pytest.mark.slow

REQUIRE_BROWSER = os.environ.get("CREST_REQUIRE_BROWSER") == "1"


@pytest.fixture
def store(swept: Swept) -> Iterator[Store]:
    s = Store(swept.url, create=False)
    yield s
    s.close()


def test_the_note_is_the_sweep_file_as_optuna_dashboard_reads_it(swept: Swept, tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import get_note

    shutil.copyfile(swept.bare_url.removeprefix("sqlite:///"), tmp_path / "crest.db")
    store = Store(f"sqlite:///{tmp_path / 'crest.db'}", create=False)
    try:
        info = store.require_study(swept.study)
        storage = store.optuna_storage()
        study_id = storage.get_study_id_from_name(info.name)
        study = optuna.load_study(study_name=info.name, storage=storage)
        # crest launch wrote the sweep file as the note
        assert get_note(study) == read_study_note(storage, study_id) == sweep_note(info.sweep_yaml)
        assert storage.get_study_system_attrs(study_id)[NOTE_VERSION_KEY] == 1
        assert study.metric_names == ["size_bytes", "accuracy"]
        long = info.sweep_yaml + "# a long comment to split the note into pieces\n" * 120
        write_study_note(storage, study_id, long)
        assert get_note(study) == read_study_note(storage, study_id) == sweep_note(long)
        assert len(sweep_note(long)) > 2 * 2045, "the note spans three pieces"
        write_study_note(storage, study_id, long)
        assert storage.get_study_system_attrs(study_id)[NOTE_VERSION_KEY] == 2, "the same note is not rewritten"
        write_study_note(storage, study_id, info.sweep_yaml)
        assert get_note(study) == sweep_note(info.sweep_yaml), "pieces left from the longer note are emptied"
        assert storage.get_study_system_attrs(study_id)[NOTE_VERSION_KEY] == 3
    finally:
        store.close()


def test_the_dashboard_reads_the_same_feasibility_and_the_trial_attributes(store: Store, swept: Swept) -> None:
    info = store.require_study(swept.study)
    assert dashboard_feasibility_mismatches(store, info) == []
    storage = store.optuna_storage()
    for trial in storage.get_all_trials(storage.get_study_id_from_name(info.name)):
        assert {"accuracy", "accuracy_drop", "size_bytes", "ratio"} <= set(trial.user_attrs)
        assert len(trial.system_attrs["constraints"]) == 1


def _browser_or_skip() -> tuple[str, str]:
    """Chromium's and chromedriver's paths; skip (or fail, with CREST_REQUIRE_BROWSER=1) without them."""
    missing = []
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("Chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    for module, package in (("selenium", "selenium"), ("optuna_dashboard", "optuna-dashboard")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{package} (pip install -e '.[test]')")
    if missing:
        reason = "the browser test needs " + ", ".join(missing)
        if REQUIRE_BROWSER:
            pytest.fail(reason + " and CREST_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    return chromium, driver  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(url: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"optuna-dashboard exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"optuna-dashboard did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def dashboard(swept: Swept, tmp_path: Path) -> Iterator[str]:
    """optuna-dashboard on the study's database, on a free loopback port; always stopped."""
    _browser_or_skip()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    command = [str(exe)] if exe.exists() else [shutil.which("optuna-dashboard") or "optuna-dashboard"]
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    server = subprocess.Popen([*command, swept.url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/studies", server, timeout=60)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium, with bounded page loads; always quit."""
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    options.binary_location = chromium
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(60)
    session.set_script_timeout(30)
    try:
        yield session
    finally:
        session.quit()


def _wait(browser: Any, condition: Any, what: str, timeout: float = 60) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.3).until(condition)
    except TimeoutException:
        shot = Path(os.environ.get("TMPDIR", "/tmp")) / "crest-dashboard-timeout.png"
        browser.save_screenshot(str(shot))
        pytest.fail(f"{what} did not show within {timeout:.0f} s (screenshot: {shot})")


_PARETO_TRACES = """
const g = document.getElementById('graph-pareto-front');
if (!g || !g.data || g.data.length === 0) return null;
return g.data.map(t => [String(t.hovertemplate || ''), (t.x || []).length]);
"""


@pytest.mark.timeout(300)
def test_optuna_dashboard_shows_the_study_in_headless_chromium(
    swept: Swept, store: Store, dashboard: str, browser: Any, tmp_path: Path
) -> None:
    info = store.require_study(swept.study)
    study_id = store.optuna_storage().get_study_id_from_name(info.name)
    complete = [t for t in store.trials(info.id) if t.state == "COMPLETE"]
    limit = 0.05
    infeasible = len([t for t in complete if t.accuracy_drop is not None and t.accuracy_drop > limit])
    assert 0 < infeasible < len(complete) == 8

    browser.get(f"{dashboard}/dashboard/studies/{study_id}")
    traces = _wait(browser, lambda d: d.execute_script(_PARETO_TRACES), "the Pareto front plot")
    body = browser.find_element("tag name", "body").text
    assert "Pareto Front" in body and f"{swept.study} (id={study_id})" in body
    points = {template.split("<extra>")[-1].removesuffix("</extra>"): n for template, n in traces}
    assert sum(points.values()) == len(complete), points
    assert points["Infeasible Trial"] == infeasible, points
    assert points.get("Feasible Trial", 0) + points.get("Best Trial", 0) == len(complete) - infeasible
    time.sleep(1.0)  # let the other plots finish drawing before the picture
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("CREST_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "dashboard.png", Path(os.environ["CREST_SCREENSHOT_DIR"]) / "dashboard.png")

    browser.get(f"{dashboard}/dashboard/studies/{study_id}/trials")
    _wait(browser, lambda d: f"{len(complete)} Trials" in d.find_element("tag name", "body").text, "the trial count")
    body = browser.find_element("tag name", "body").text
    for attr in ("ratio", "size_bytes", "accuracy"):
        assert attr in body, f"user attribute {attr} on the trial page"

    browser.get(f"{dashboard}/dashboard/studies/{study_id}/note")
    _wait(browser, lambda d: "max_accuracy_drop: 0.05" in d.find_element("tag name", "body").text, "the study note")


@pytest.mark.timeout(120)
def test_the_report_reads_offline_in_chromium(swept: Swept, store: Store, browser: Any, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_report(store, swept.study, page)
    browser.get(page.as_uri())
    images = _wait(browser, lambda d: d.execute_script(
        "const i = Array.from(document.images);"
        "return i.length && i.every(x => x.complete) ? i.map(x => x.naturalWidth) : null;"), "the report's images")
    assert len(images) == 4 and all(w > 300 for w in images)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(("data:", "file:")) for url in fetched), fetched
    body = browser.find_element("tag name", "body").text
    assert "Summary" in body and "Decoder checks of the nodes" in body and "Sweep file" in body
    browser.save_screenshot(str(tmp_path / "report.png"))
