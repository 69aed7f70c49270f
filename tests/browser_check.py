"""Open a report page in headless Chromium and read back what a reader would see (stdlib only).

:func:`probe_page` copies the page beside itself with a small script that, once the page has
loaded, writes into the DOM which images failed to load, how wide the page is, and which elements
stick out past the window; Chromium's ``--dump-dom`` prints that DOM, and the result is parsed out
of it. :func:`missing_link_targets` checks every relative link and image of the page on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--mute-audio")

_PROBE_ID = "browser-probe-result"
_PROBE = """<script>
window.addEventListener("load", function () {
  var width = document.documentElement.clientWidth;
  var inScroller = function (node) { return node.closest(".wide") !== null; };
  var sticking = [];
  document.querySelectorAll("body *").forEach(function (node) {
    var box = node.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5 && !inScroller(node) && sticking.length < 20) {
      sticking.push(node.tagName.toLowerCase() + (node.id ? "#" + node.id : "") + ": "
                    + (node.textContent || "").trim().slice(0, 60) + " (right edge " + Math.round(box.right) + ")");
    }
  });
  var images = Array.prototype.map.call(document.images, function (image) {
    return {src: image.getAttribute("src"), loaded: image.complete && image.naturalWidth > 0,
            width: image.naturalWidth};
  });
  var out = document.createElement("pre");
  out.id = "%s";
  out.textContent = JSON.stringify({scroll_width: document.documentElement.scrollWidth, client_width: width,
                                    images: images, sticking_out: sticking});
  document.body.appendChild(out);
});
</script>""" % _PROBE_ID


def find_chromium() -> str | None:
    """The first Chromium (or Chrome) on the PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(command: list[str], timeout_s: float) -> str:
    """Run Chromium in a session of its own; past ``timeout_s`` kill the whole session (no process left)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(f"{command[0]} did not finish within {timeout_s} s (killed)") from None
    finally:
        try:  # Chromium's helpers (zygote, renderer) are in its session: none may outlive it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return output


def probe_page(page: Path | str, *, width: int = 1400, height: int = 1000, timeout_s: float = 60,
               chromium: str | None = None) -> dict:
    """Load ``page`` at ``width`` px in headless Chromium; return ``scroll_width``, ``client_width``,
    ``images`` (``src``, ``loaded``, ``width``) and ``sticking_out`` (elements past the right edge,
    outside a ``.wide`` scroll box)."""
    page = Path(page).resolve()
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium on the PATH")
    text = page.read_text(encoding="utf-8")
    probed = page.with_name(f".probe-{uuid.uuid4().hex[:8]}.html")  # beside it: relative links still resolve
    probed.write_text(text.replace("</body>", _PROBE + "</body>", 1) if "</body>" in text else text + _PROBE,
                      encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            dom = _run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], timeout_s)
    finally:
        probed.unlink(missing_ok=True)
    found = re.search(rf'<pre id="{_PROBE_ID}">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError(f"{page}: Chromium's DOM has no probe result (the page did not finish loading?): "
                           f"{dom[-500:]!r}")
    import html

    return json.loads(html.unescape(found.group(1)))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        for key in ("href", "src"):
            if values.get(key):
                self.targets.append(values[key])


def link_targets(page: Path | str) -> tuple[list[str], set[str]]:
    """Every ``href`` and ``src`` of ``page``, and the ids its fragments may point to."""
    parser = _Links()
    parser.feed(Path(page).read_text(encoding="utf-8"))
    return parser.targets, parser.ids


def missing_link_targets(page: Path | str) -> list[str]:
    """The relative links and images of ``page`` whose file (or ``#id``) does not exist."""
    page = Path(page)
    targets, ids = link_targets(page)
    missing = []
    for target in targets:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue
        if not parts.path:
            if parts.fragment and parts.fragment not in ids:
                missing.append(target)
            continue
        if not (page.parent / unquote(parts.path)).exists():
            missing.append(target)
    return missing


WIDTH = 1400
"""The window a reader opens the report in: a laptop screen."""


def check_page_in_browser(page: Path | str, *, width: int = WIDTH) -> dict:
    """Assert what a reader needs of ``page`` at ``width`` px: every link and image leads to a
    file, every image loads, nothing sticks out past the window. Skips the calling test where no
    Chromium can be had; returns the probe (for more checks)."""
    import pytest

    if find_chromium() is None:
        pytest.skip("no Chromium on the PATH (Debian: apt-get install chromium; .ci/run installs it)")
    missing = missing_link_targets(page)
    assert not missing, f"{page}: links to nothing: {missing}"
    probe = probe_page(page, width=width)
    broken = [image["src"] for image in probe["images"] if not image["loaded"]]
    assert probe["images"] and not broken, f"{page}: images that did not load: {broken}"
    assert probe["scroll_width"] <= width, (f"{page}: {probe['scroll_width']} px wide at a {width} px window: "
                                            f"{probe['sticking_out']}")
    assert not probe["sticking_out"], f"{page}: past the right edge at {width} px: {probe['sticking_out']}"
    return probe
