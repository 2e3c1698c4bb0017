"""All the text of an HTML document, block by block, with links as markdown, in linear time.

The browser's reader is trafilatura, which finds the main content of a page but whose cost grows
faster than the page: a 1.8 MB page of 40k links takes it about half a minute. For pages past
the browser's extraction limits this simpler reader is used instead: it keeps everything but
scripts and styles, starts a new line at every block element, and writes links as
`[text](href)`, the same form trafilatura's markdown output has, so the browser numbers the
links of both readers the same way.
"""

from __future__ import annotations

import re

import lxml.etree
import lxml.html

#: Elements that start a new line of text.
BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
)
#: Elements whose content is not text for a reader.
HIDDEN_TAGS = ("script", "style", "noscript", "template", "head")

# Character references such as `&#1;` put control characters into the parsed text, and lxml
# refuses to store such text back into the tree.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# What would end a markdown link's address early, or is no URL character at all.
_NOT_IN_MARKDOWN_HREF = re.compile(r"[\s)\x00-\x1f\x7f]")


def plain_text(html: str) -> tuple[str, str]:
    """(title, text) of `html`; links in the text are `[text](href)`. ("", "") if nothing parses."""
    try:
        # Bytes with an explicit encoding: lxml refuses a str that carries an XML encoding
        # declaration, and the declaration must not override the charset already applied.
        root = lxml.html.document_fromstring(
            html.encode("utf-8", errors="replace"),
            parser=lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True),
        )
    except (lxml.etree.ParserError, ValueError):  # an empty or non-HTML document
        return "", ""
    title = " ".join((root.findtext(".//title") or "").split())
    for element in list(root.iter(*HIDDEN_TAGS)):
        element.drop_tree()
    for anchor in list(root.iter("a")):
        href = (anchor.get("href") or "").strip()
        text = " ".join(anchor.text_content().split())
        for child in list(anchor):
            anchor.remove(child)
        if href and text:
            # The markdown form must survive its own pattern: no brackets in the text, no
            # whitespace or closing parenthesis in the address.
            text = text.replace("[", "(").replace("]", ")")
            href = _NOT_IN_MARKDOWN_HREF.sub(_escaped, href)
            anchor.text = _clean(f"[{text}]({href})")
        else:
            anchor.text = _clean(text)
    for block in root.iter(*BLOCK_TAGS):
        block.text = "\n" + _clean(block.text or "")
        block.tail = "\n" + _clean(block.tail or "")
    body = root.find("body")
    text = (body if body is not None else root).text_content()
    lines = (" ".join(line.split()) for line in text.splitlines())
    return title, "\n".join(line for line in lines if line)


def _clean(text: str) -> str:
    return _CONTROL_CHARACTERS.sub("", text)


def _escaped(match: re.Match[str]) -> str:
    """A character as its percent-encoded UTF-8 bytes."""
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))
