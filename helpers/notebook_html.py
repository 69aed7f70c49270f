"""An executed notebook as a light, self-contained HTML page, for the report to link to.

nbconvert's default ``lab`` and ``classic`` templates load MathJax and require.js from a CDN
(there is no internet where the study runs) and inline about 290 kB of CSS into every page. The
``basic`` template gives the cells alone; :func:`render` wraps them in a small page of its own
(pygments' colours for the code, a few rules for outputs and tracebacks): nothing is loaded
from elsewhere, and the figures stay embedded as nbconvert writes them. Prompts are left out.

The page records the SHA-256 of the notebook it was made from, so :func:`is_current` can tell a
stale page (the notebook ran again) from a current one whatever the files' times (a copied
report folder keeps its pages).
"""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path

from helpers import paths

SOURCE_HASH = "source-sha256"
_HASH_PATTERN = re.compile(rf'<meta name="{SOURCE_HASH}" content="([0-9a-f]{{64}})">')

_PAGE_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;line-height:1.4}
.back{font-size:0.9em;color:#555}
.cell{margin:0.6em 0}
.input_area{background:#f7f7f7;border:1px solid #e0e0e0;border-radius:3px;padding:0 0.4em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0.3em 0;font-size:0.85em}
.output_area img{max-width:100%}
.output_stderr{background:#fff4f4}
.output_error pre{background:#fde8e8}
.rendered_html table{border-collapse:collapse;font-size:0.85em;display:block;width:max-content;max-width:100%;
overflow-x:auto;border:0}
.dataframe td,.dataframe th{border:1px solid #ddd;padding:2px 5px}
.anchor-link{display:none}
.ansi-red-fg{color:#b22b31}.ansi-green-fg{color:#007427}.ansi-yellow-fg{color:#b27d12}
.ansi-blue-fg{color:#0065ca}.ansi-cyan-fg{color:#258f8f}.ansi-magenta-fg{color:#a03196}.ansi-bold{font-weight:bold}
"""


def html_path_for(notebook: Path | str) -> Path:
    """Where the page of ``notebook`` goes: beside it, ``.ipynb`` replaced by ``.html``."""
    return Path(notebook).with_suffix(".html")


def _source_hash(notebook: Path) -> str:
    return hashlib.sha256(notebook.read_bytes()).hexdigest()


def is_current(notebook: Path | str, page: Path | str | None = None) -> bool:
    """Does the page exist and come from the notebook as it is now (same SHA-256)?"""
    notebook = Path(notebook)
    page = Path(page) if page is not None else html_path_for(notebook)
    if not page.exists():
        return False
    with open(page, encoding="utf-8", errors="replace") as handle:
        head = handle.read(2000)
    found = _HASH_PATTERN.search(head)
    return bool(found) and found.group(1) == _source_hash(notebook)


def render(notebook: Path | str, page: Path | str | None = None, *, back_link: str | None = "../index.html") -> Path:
    """Write ``notebook`` (executed) as a self-contained HTML page (atomically); return its path.

    ``back_link``: a link at the top back to the report (None for none). Raises what nbformat or
    nbconvert raise for a notebook they cannot read, with the notebook's path added.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    notebook = Path(notebook)
    page = Path(page) if page is not None else html_path_for(notebook)
    source_hash = _source_hash(notebook)
    try:
        node = nbformat.read(notebook, as_version=4)
        exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True,
                                exclude_anchor_links=True)
        body, _ = exporter.from_notebook_node(node)
    except Exception as error:
        raise RuntimeError(f"{notebook}: could not be rendered as HTML ({type(error).__name__}: {error})") from error
    title = f"{notebook.parent.name}: {notebook.name}"
    back = (f'<p class="back"><a href="{html.escape(back_link)}">back to the report</a> &middot; executed notebook '
            f'<code>{html.escape(notebook.name)}</code> of run <code>{html.escape(notebook.parent.name)}</code></p>'
            if back_link else "")
    css = _PAGE_CSS + HtmlFormatter(style="default").get_style_defs(".highlight")
    text = (f'<!doctype html>\n<html><head><meta charset="utf-8">\n<meta name="{SOURCE_HASH}" content="{source_hash}">\n'
            f"<title>{html.escape(title)}</title>\n<style>{css}</style></head>\n<body>\n{back}\n{body}\n</body></html>\n")
    return paths.write_text_atomic(page, text)


def render_if_stale(notebook: Path | str, *, back_link: str | None = "../index.html") -> tuple[Path, bool]:
    """Render ``notebook`` unless its page is current; return the page's path and whether it was rendered."""
    page = html_path_for(notebook)
    if is_current(notebook, page):
        return page, False
    return render(notebook, page, back_link=back_link), True
