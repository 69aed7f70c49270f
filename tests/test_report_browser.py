"""The report as a reader sees it: index.html rendered in headless Chromium at 1400 px.

Every image loads, nothing sticks out past the window (no sideways scroll), and every link of the
page (each run's notebook page and figures, the footnotes) leads somewhere. Skips where no
Chromium can be had (Debian's ``chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import pytest

from browser_check import check_page_in_browser, missing_link_targets
from helpers import reporting
from report_fixtures import write_small_study


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    folder = write_small_study(tmp_path_factory.mktemp("report") / "smoke")
    broken = folder / "tl_004_resnet50"  # a notebook nbformat cannot read: listed, the report still built
    broken.mkdir()
    (broken / "run.json").write_text('{"status": "timeout", "seconds": 900, "notebook": "03_transfer_learning.ipynb"}')
    (broken / "03_transfer_learning.ipynb").write_text("{ not json")
    return reporting.build_report(folder, profile="smoke")


def test_the_report_renders_in_chromium_without_broken_images_or_sideways_scroll(small_report):
    probe = check_page_in_browser(small_report)
    sources = {image["src"] for image in probe["images"]}
    assert {"forest.png", "tl_000_mobilenetv2/cam_overlays.png", "tl_000_mobilenetv2/predictions_grid.png"} <= sources
    assert all(image["width"] > 0 for image in probe["images"])


def test_every_run_links_to_its_notebook_page_and_figures(small_report):
    page = small_report.read_text()
    for run in ("tl_000_mobilenetv2", "scratch_000_mobilenetv2", "svm_000_mobilenetv2", "tl_001_squeezenet_adam",
                "tl_002_vgg16"):
        assert f'href="{run}/03_transfer_learning.html"' in page, run
        assert (small_report.parent / run / "03_transfer_learning.html").stat().st_size > 1000
    assert "RuntimeError" in (small_report.parent / "tl_002_vgg16" / "03_transfer_learning.html").read_text()
    assert 'href="tl_000_mobilenetv2/cam_overlays.png"' in page and 'href="tl_000_vgg16/' not in page
    assert not missing_link_targets(small_report)
    listed = page.split("Notebooks that could not be rendered as HTML:")[1]
    assert "tl_004_resnet50:" in listed and "03_transfer_learning.ipynb: could not be rendered" in listed
    assert not (small_report.parent / "tl_004_resnet50" / "03_transfer_learning.html").exists()


def test_notebook_pages_are_rendered_again_only_when_their_notebook_changed(small_report):
    from helpers import notebook_html

    notebook = small_report.parent / "tl_001_squeezenet_adam" / "03_transfer_learning.ipynb"
    page = notebook_html.html_path_for(notebook)
    assert notebook_html.is_current(notebook) and notebook_html.render_if_stale(notebook) == (page, False)
    notebook.write_text(notebook.read_text().replace("Some *text*.", "Other *text*."))
    assert not notebook_html.is_current(notebook)
    assert notebook_html.render_if_stale(notebook) == (page, True) and "Other <em>text</em>" in page.read_text()
    assert "cdn" not in page.read_text().lower() and "<script" not in page.read_text()  # nothing from elsewhere
