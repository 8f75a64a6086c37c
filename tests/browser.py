"""Headless Chromium for tests: the page's DOM after its scripts ran (Debian's chromium;
`make test` installs it and sets KBOOST_REQUIRE_BROWSER, which turns a missing browser from a
skip into a failure)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def dump_dom(page: Path, profile_dir: Path, until: str | None = None,
             budgets_ms: tuple[int, ...] = (5000, 30000, 120000)) -> str:
    """The DOM of ``page`` once its scripts ran. With ``until``, retried with longer virtual-time
    budgets until the DOM contains it: virtual time runs ahead of media loading (not a network
    fetch), so on a busy machine a page's own reporting may come after the first budget ends."""
    for budget_ms in budgets_ms:
        dom = _dump_dom_once(page, profile_dir, budget_ms)
        if until is None or until in dom:
            break
    return dom


def _dump_dom_once(page: Path, profile_dir: Path, budget_ms: int) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("KBOOST_REQUIRE_BROWSER"):
            pytest.fail("KBOOST_REQUIRE_BROWSER is set but no chromium is on PATH (make browser installs it)")
        pytest.skip("headless Chromium is not installed (Debian package: chromium; `make browser`)")
    # The flags keep Chromium off the (closed) network: no background or component fetches.
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--disable-quic", f"--user-data-dir={profile_dir}", "--allow-file-access-from-files",
                             f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout
