"""`to_html(markdown, images) -> str`: a report as one self-contained HTML page.

Owns: `to_html`. The page is rendered from the very Markdown written to `report.md` (Python-
Markdown with tables), its charts embedded as data URIs and its style inline, so it opens
anywhere, offline, as a single file, with no script at all. Raw HTML in the Markdown (a
candidate named `<script>`, say) is shown as text, never run.
"""

from __future__ import annotations

import base64
import html
import re

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
code { background: #f5f5f5; padding: 0 3px; }
img { max-width: 100%; border: 1px solid #eee; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
"""


def to_html(markdown_text: str, images: dict[str, bytes], title: str) -> str:
    """The Markdown report as a complete HTML page.

    Args:
        markdown_text: the report, as written to `report.md`.
        images: PNG bytes by the file name the Markdown links to (`![...](name.png)`);
            each link becomes a data URI.
        title: the page title.
    """
    import markdown

    def embed(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in images:
            return match.group(0)
        data = base64.b64encode(images[name]).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    text = markdown_text.replace("&", "&amp;").replace("<", "&lt;")
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", embed, text)
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
