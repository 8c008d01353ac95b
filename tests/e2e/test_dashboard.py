"""The dashboard in real headless Chromium (Debian's chromium + chromedriver, via selenium):
the page loads, shows a flow the test generated, draws the chart, shows a hostile process
name as text, and logs no console errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from netwarden.events import Direction, Event, EventType, ProcessInfo, Proto
from netwarden.output import sanitize
from netwarden.store.sqlite import open_store
from tests.integration.netns import netns

pytestmark = pytest.mark.root

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
HOSTILE = '<img src=x onerror="document.title=1">\x1b[31m'


def browse(url: str, shot: str) -> dict[str, Any]:
    """Runs in a child inside the namespace: open the page, wait for content, report."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
        f"--user-data-dir={os.path.dirname(shot)}/chrome-profile",
    ):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.get(url)
        wait = WebDriverWait(drv, 20)
        wait.until(lambda d: "8181" in d.find_element(By.ID, "flows").text)
        wait.until(lambda d: int(d.find_element(By.ID, "chart").get_attribute("data-points") or 0))
        wait.until(lambda d: "curl-evil" in d.find_element(By.ID, "processes").text
                   or "<img" in d.find_element(By.ID, "processes").text)  # fmt: skip
        drv.save_screenshot(shot)
        return {
            "title": drv.title,
            "flows": drv.find_element(By.ID, "flows").text,
            "processes": drv.find_element(By.ID, "processes").text,
            "imgs": len(drv.find_elements(By.CSS_SELECTOR, "table img")),
            "points": drv.find_element(By.ID, "chart").get_attribute("data-points"),
            "status": drv.find_element(By.ID, "status").text,
            "logs": [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"],
        }
    finally:
        drv.quit()


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                    reason="Debian chromium and chromium-driver are not installed")  # fmt: skip
def test_dashboard_shows_flows_chart_and_escapes(tmp_path: Path) -> None:
    pytest.importorskip("selenium")
    with netns() as ns:
        # a hostile process name already in the store, as proc.py hands it on (control
        # characters escaped): the page must show the markup as text
        store = open_store(str(tmp_path))
        store.add(
            Event(
                ts=time.time() - 5,
                event=EventType.END,
                proto=Proto.TCP,
                ipproto=6,
                family=4,
                src=ip_address("127.0.0.1"),
                dst=ip_address("127.0.0.9"),
                sport=1,
                dport=2,
                flow="hostile-1",
                direction=Direction.LOCAL,
                orig_bytes=10,
                resp_bytes=10,
                duration=0.1,
                process=ProcessInfo(pid=1, comm="curl-evil" + sanitize(HOSTILE)),
            )
        )
        store.close()
        daemon = ns.popen(
            sys.executable, "-m", "netwarden.cli", "run", "--backend", "sniff",
            "--state-dir", str(tmp_path), "--listen", "127.0.0.1:9753",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        server = ns.popen(sys.executable, "-m", "http.server", "8181", "--bind", "127.0.0.1",
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            assert daemon.stderr is not None
            assert "listening on" in daemon.stderr.readline()
            for _ in range(50):
                if ns.run("curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8181/",
                          check=False).returncode == 0:  # fmt: skip
                    break
                time.sleep(0.1)
            shot = str(tmp_path / "dashboard.png")
            page = ns.call(browse, "http://127.0.0.1:9753/", shot, timeout=120)
        finally:
            for p in (server, daemon):
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    assert "127.0.0.1:8181" in page["flows"]
    assert int(page["points"]) >= 1
    assert "backend sniff" in page["status"]
    # the hostile name is shown as text, with its control character escaped
    assert 'curl-evil<img src=x onerror="document.title=1">\\x1b[31m' in page["processes"]
    assert page["imgs"] == 0 and page["title"] == "netwarden"
    assert page["logs"] == []
    keep = os.environ.get("NETWARDEN_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
