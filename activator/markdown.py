"""Model cards (a KO's README.md) as safe HTML: Markdown by markdown-it-py, then sanitised by nh3.

A card is written by whoever published the KO and read by clinicians in their browser, so it must
never run script there. Two independent layers: markdown-it renders with raw HTML off (a ``<script>``
in the card comes out as text) and refuses ``javascript:``/``vbscript:``/``data:`` links; nh3
(ammonia) then keeps only an allow-list of tags, attributes and URL schemes, whatever the first
layer let through. The page's Content-Security-Policy (no inline script, no inline style) is the third; so no
``style`` attribute is kept (table alignment is lost; it would be blocked anyway).
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

__all__ = ["MAX_CARD_BYTES", "render_markdown"]

MAX_CARD_BYTES = 512 * 1024
"""A card longer than this is cut (with a note): rendering time and page size stay bounded."""

_TAGS = {
    "a", "abbr", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
}
_SCHEMES = {"http", "https", "mailto"}

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def render_markdown(text: str) -> str:
    """``text`` (Markdown) as sanitised HTML: no script, no event handler, no ``javascript:`` URL."""
    cut = len(text.encode("utf-8")) > MAX_CARD_BYTES
    if cut:
        text = text.encode("utf-8")[:MAX_CARD_BYTES].decode("utf-8", errors="ignore")
    html = _renderer.render(text)
    if cut:
        html += "<p><em>The model card is longer than 512 KiB; the rest is not shown here.</em></p>"
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
