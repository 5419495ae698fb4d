"""The HTML report: self-contained, with the peak, the tables and the plots; it loads in a real
headless Chromium without console errors; a Report shows as HTML in Jupyter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _render_fixtures import PEAK, small_report

from nnmem.cli import main
from nnmem.render.html import report_fragment, report_page
from nnmem.render.units import human_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Tags(HTMLParser):
    """Every start tag with its attributes, to look for anything that would reach outside the file."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def assert_self_contained(page: str) -> None:
    found = tags(page)
    names = {tag for tag, _ in found}
    assert not names & {"script", "link", "img", "iframe", "object", "embed"}, names
    for tag, attrs in found:
        for key, value in attrs.items():
            if key in ("src", "href", "xlink:href") and value:
                assert value.startswith("#"), (tag, key, value)  # only references inside the page
    without_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", page)  # names, never fetched
    assert not re.search(r"https?://|@import|url\((?!#)", without_namespaces)


def test_the_page_has_the_peak_tables_and_plots_and_reaches_nothing_outside() -> None:
    pytest.importorskip("matplotlib")
    page = report_page(small_report(), title="nnmem estimate: small", batch_peaks=((1, 10), (2, 20)))
    assert_self_contained(page)
    assert page.startswith("<!DOCTYPE html>")
    assert f'data-peak-bytes="{PEAK}"' in page
    assert "peak <strong>17.75 MiB</strong> (18,612,224 B)" in page
    assert page.count("<svg") == 3  # memory over the step, per-layer bars, peak against batch size
    assert page.count("<table>") == 3  # categories at the peak, layer by layer, the what-if
    assert "<td>conv1</td>" in page and "<td class=num>4.00 MiB</td>" in page
    for heading in ("At the peak", "Memory over the step", "Layer by layer", "Peak against batch size"):
        assert f"<h2>{heading}</h2>" in page


def test_without_matplotlib_the_page_says_how_to_get_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    page = report_page(small_report())
    assert "<svg" not in page
    assert "pip install &#x27;nnmem[plot]&#x27;" in page
    assert "17.75 MiB" in page


def test_a_report_shows_as_html_in_jupyter() -> None:
    report = small_report()
    fragment = report._repr_html_()
    assert fragment == report_fragment(report)
    assert "<!DOCTYPE" not in fragment and "<svg" not in fragment  # a fragment, quick to show
    assert "<strong>17.75 MiB</strong>" in fragment
    assert "<td>conv1</td>" in fragment and "<td>optimizer_state</td>" in fragment
    assert_self_contained(fragment)


# A real browser -------------------------------------------------------------------------------

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install -y chromium)"
)


def load_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Open `page` in headless Chromium: the DOM after loading, and every console message."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return done.stdout, console


@needs_chromium
def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    """The check below proves something only if it catches a page that does fail."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><title>x</title><p>hello</p><script>no_such_function();</script>")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert "hello" in dom
    assert any("Uncaught ReferenceError" in line for line in console), console


@pytest.fixture(scope="module")
def classic_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The acceptance command: nnmem estimate examples/classic_cnn.txt --format html --output r.html."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("html") / "r.html"
    assert (
        main(["estimate", str(EXAMPLES / "classic_cnn.txt"), "--format", "html", "--output", str(out)]) == 0
    )
    return out


def test_the_classic_cnn_page_holds_the_hand_calculation(classic_page: Path) -> None:
    page = classic_page.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "<td>9216·500 + 500 = 4,608,500</td>" in page  # F1 of the textbook table
    assert "Textbook beside what PyTorch really holds" in page
    assert page.count("<svg") == 2  # memory over the step, per-layer bars


@needs_chromium
def test_the_page_loads_in_chromium_without_console_errors_and_shows_the_peak(
    classic_page: Path, tmp_path: Path
) -> None:
    dom, console = load_in_chromium(classic_page, tmp_path / "profile")
    assert console == []
    match = re.search(
        r'<p class="peak" id="peak" data-peak-bytes="(\d+)">peak <strong>([\d.]+ MiB)</strong>', dom
    )
    assert match is not None, dom[:2000]
    peak_bytes = int(match.group(1))
    assert match.group(2) == human_bytes(peak_bytes)
    assert f"({peak_bytes:,} B)" in dom
    assert "live memory (MiB)" in dom  # the timeline's axis, as SVG text in the page
