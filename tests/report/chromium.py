"""Open HTML pages in headless Chromium from tests: load check, broken images, screenshots.

Dependency-free (no Selenium, no DevTools protocol): :func:`check_page` writes a copy of the
page, in the same folder so relative links resolve alike, with a script that waits for the
window's ``load`` event, then inspects every ``<img>`` (``complete && naturalWidth > 0``), the
tables and the links, and writes the result as JSON into ``<pre id="qc-result">``. Chromium
runs the copy with ``--dump-dom`` and the result is read back from the dumped DOM.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``); a missing browser
fails the test with that message rather than skipping it. Flags suit a root user on a closed
network (no sandbox, no GPU, no background traffic, a fresh profile per run).

Usage (from any test)::

    from tests.report.chromium import check_page, screenshot

    result = check_page(path_to_html)
    assert result["loaded"] and not result["broken_images"]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM_FLAGS", "check_page", "chromium_path", "local_links", "screenshot"]

#: Flags for a headless run as root on a machine without a network.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)

_RESULT_ID = "qc-result"

_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute("src"); });
  var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
  var out = {
    loaded: true,
    title: document.title,
    n_images: imgs.length,
    broken_images: broken,
    image_sizes: imgs.map(function (i) { return [i.getAttribute("src"), i.naturalWidth,
                                                 i.naturalHeight]; }),
    n_tables: tables.length,
    table_ids: tables.map(function (t) { return t.id || ""; }),
    table_rows: tables.map(function (t) { return t.querySelectorAll("tbody tr").length; }),
    headings: Array.prototype.slice.call(document.querySelectorAll("h1, h2, h3"))
                   .map(function (h) { return h.textContent.trim(); }),
    n_scripts: document.scripts.length - 1,
    text_length: document.body.innerText.length
  };
  var pre = document.createElement("pre");
  pre.id = "%s";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""" % _RESULT_ID  # noqa: UP031


def chromium_path() -> str:
    """Path of the Chromium executable; fails the calling test with a clear message if none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed to check the HTML report and was not found "
                "(looked for chromium, chromium-browser, google-chrome on PATH). Install it: "
                "`apt-get install chromium` (Debian) or your system's package.", pytrace=False)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="qsmiron-chromium-") as profile:
        cmd = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        env = {**os.environ, "HOME": profile}  # no writes to the real home
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"Chromium did not finish within {timeout} s: {' '.join(cmd)}\n"
                        f"{exc.stderr or ''}", pytrace=False)


def check_page(html: str | Path, timeout: float = 60.0, budget_ms: int = 5000) -> dict[str, Any]:
    """Load ``html`` in headless Chromium and report what the page showed.

    Parameters
    ----------
    html : str or Path
        The page (a file on disk; opened through ``file://`` as a user would).
    timeout : float
        Seconds before the browser is given up on (fails the test).
    budget_ms : int
        Virtual time the page gets to load (``--virtual-time-budget``).

    Returns
    -------
    dict
        ``loaded`` (the load event fired), ``title``, ``n_images``, ``broken_images`` (``src``
        of every image that did not decode), ``image_sizes`` (``[src, width, height]``),
        ``n_tables``, ``table_ids``, ``table_rows`` (body rows per table), ``headings``,
        ``n_scripts`` (scripts of the page itself), ``text_length`` and ``dom`` (the dumped
        DOM).
    """
    html = Path(html).resolve()
    text = html.read_text(encoding="utf-8")
    probe = html.with_name(f".chromium-check-{html.name}")
    if re.search(r"</body>", text, flags=re.IGNORECASE):
        checked = re.sub(r"</body>", lambda _: _PROBE + "</body>", text, count=1,
                         flags=re.IGNORECASE)
    else:
        checked = text + _PROBE
    probe.write_text(checked, encoding="utf-8")
    try:
        proc = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", probe.as_uri()],
                    timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(rf'<pre id="{_RESULT_ID}">(.*?)</pre>', proc.stdout, flags=re.DOTALL)
    if m is None:
        pytest.fail(f"Chromium did not report on {html} (rc {proc.returncode}); the page did "
                    f"not load or its load event never fired.\nstderr tail:\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)
    import html as _html

    result = json.loads(_html.unescape(m.group(1)))
    result["dom"] = proc.stdout
    return result


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 2400,
               timeout: float = 60.0) -> Path:
    """Render ``html`` to ``png`` (``width`` x ``height`` CSS pixels) with headless Chromium."""
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([f"--window-size={width},{height}", "--virtual-time-budget=5000",
                 f"--screenshot={png}", html.as_uri()], timeout)
    if not png.is_file() or png.stat().st_size == 0:
        pytest.fail(f"Chromium wrote no screenshot of {html} (rc {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)
    return png


def local_links(html: str | Path) -> list[str]:
    """Every ``href``/``src`` of the page that is not an in-page anchor, as written."""
    text = Path(html).read_text(encoding="utf-8")
    links = re.findall(r'\b(?:href|src)\s*=\s*"([^"]*)"', text)
    return [link for link in links if link and not link.startswith("#")]
