"""A text browser for agents: open a page, read it a page of lines at a time, find, follow links.

    browser = Browser(allow_hosts=["127.0.0.1:8765"])
    tools = browser.tools()          # [open, scroll, find], sharing one browsing session

- `open(target)`: a URL, or the number of a link on the current page (`open("3")`).
- `scroll(where)`: "down" (default), "up", or a line number to jump to.
- `find(pattern)`: lines of the current page containing `pattern` (case-insensitive); the view
  moves to the first match.

Pages are fetched over an httpx transport (redirects followed by hand, so every hop is checked
against the `UrlPolicy`) and turned into readable text by trafilatura; links become inline
markers `Lumeva [3]`. The model sees numbered lines:

    [page] Bekora Talim (http://127.0.0.1:8765/wiki/Bekora_Talim)
    lines 1-3 of 3
    L1: Bekora Talim is a painter. Bekora Talim was born in Lumeva [1].

The session (current page, scroll position) is per episode; `fork()` copies it.

Whatever a page or the model's URL does comes back as a result for the model, never as an
exception (which the env would count as an infrastructure failure), and within bounds:

- one deadline per `open` call (`timeout`), across redirects, retries, reading and extraction,
  so a server that sends one byte a second cannot hold the call past it;
- at most `max_bytes` on the wire and after decompression, bounded while decompressing
  (`agentrl.tools.content_decoding`), so a compression bomb costs `max_bytes`, not what it
  would inflate to;
- trafilatura reads pages of up to `max_extract_tags` elements and `max_links` links (its cost
  grows with them, faster for links); larger pages, and pages where it finds no main content, are
  read by the linear-time plain reader (`agentrl.tools.plain_html`), and only the first
  `max_links` links are numbered; a tag with more than `MAX_ATTRIBUTES` attributes loses them
  (the HTML parser's time is quadratic in them);
- a `charset` that is no text encoding (`base64`, `zlib`) falls back to UTF-8, and links or
  redirects that do not parse as URLs are shown without a number or refused with a message.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urljoin

import httpx
import pydantic

from agentrl.tools.base import Tool, ToolResult, ToolStatus
from agentrl.tools.content_decoding import (
    ACCEPT_ENCODING,
    BodyTooLarge,
    BoundedDecoder,
    CorruptBody,
    UnsupportedEncoding,
)
from agentrl.tools.plain_html import plain_text
from agentrl.tools.retry import InfraError, RetriesExhausted, RetryPolicy, with_retries
from agentrl.tools.url_policy import UrlPolicy

try:
    import trafilatura
    from trafilatura.settings import use_config
except ImportError:  # pragma: no cover - depends on the installation
    trafilatura = None

_MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
# Control characters other than tab and line breaks: not text, and not for the model's context.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANCHOR = re.compile(r"<a[\s>]", re.IGNORECASE)
_OPENING_TAG = re.compile(r"<[a-zA-Z]")
# An opening tag and its attributes, whose quoted values may hold anything, '<' and '>' too.
# One character per repetition, and alternatives that start with different characters: no
# backtracking blow-up on text that is not a tag.
_TAG = re.compile(r"""<([a-zA-Z][\w:-]*)(\s(?:[^<>"']|"[^"]*"|'[^']*')*)>""")
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")


class PageRefused(Exception):
    """The page may not be opened (policy, size, content type); the message is for the model."""


@dataclass
class Page:
    url: str
    title: str
    lines: list[str]
    links: list[str]


@dataclass
class BrowserSession:
    """What one episode's browser holds: the current page and the first line on screen."""

    page: Page | None = None
    position: int = 0
    history: list[str] = field(default_factory=list)


def html_to_page(
    html: str, url: str, max_lines: int = 2000, max_links: int = 1000, max_extract_tags: int = 8000
) -> Page:
    """Readable text of an HTML document, with links numbered in order of appearance.

    trafilatura reads pages of at most `max_extract_tags` elements and `max_links` links;
    larger ones, and pages where it finds no main content (a page of links), go to the plain
    reader, whose cost stays linear. Only the first `max_links` links get a number; a link
    that does not parse as a URL keeps its text and gets none.
    """
    html = _TAG.sub(_without_excess_attributes, _CONTROL_CHARACTERS.sub("", html))
    tags, anchors = len(_OPENING_TAG.findall(html)), len(_ANCHOR.findall(html))
    title, markdown = "", ""
    if tags <= max_extract_tags and anchors <= max_links:
        title, markdown = _trafilatura_markdown(html, url)
    if not markdown.strip():  # too large for trafilatura, or nothing it calls main content
        plain_title, markdown = plain_text(html)
        title = title or plain_title
    links: list[str] = []

    def number(match: re.Match[str]) -> str:
        target = resolve_link(url, match.group(2)) if len(links) < max_links else None
        if target is None:
            return match.group(1)
        links.append(target)
        return f"{match.group(1)} [{len(links)}]"

    text = _MD_LINK.sub(number, markdown)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return Page(url=url, title=title or url, lines=lines[:max_lines], links=links)


#: More attributes than any real tag has; libxml2 (under both readers) spends time quadratic in
#: the attributes of one tag: 50,000 of them took 40-50 s.
MAX_ATTRIBUTES = 64


def _without_excess_attributes(tag: re.Match[str]) -> str:
    """A tag with more than `MAX_ATTRIBUTES` attributes loses them all (its text stays)."""
    # Tokens: `name` alone, or `name = value` (a quoted value counts as one token).
    tokens = _QUOTED.sub(" value ", tag.group(2)).replace("=", " = ").split()
    if len(tokens) - 2 * tokens.count("=") > MAX_ATTRIBUTES:
        return f"<{tag.group(1)}>"
    return tag.group(0)


def _trafilatura_markdown(html: str, url: str) -> tuple[str, str]:
    """(title, main content as markdown with links) by trafilatura."""
    if trafilatura is None:
        raise ImportError("the browser needs trafilatura: pip install 'agentrl[tools]'")
    config = use_config()
    # Short pages (a generated wiki page, a search result) are content too: no minimum size,
    # and no signal-based timeout (it only works in the main thread).
    config.set("DEFAULT", "MIN_EXTRACTED_SIZE", "1")
    config.set("DEFAULT", "MIN_OUTPUT_SIZE", "1")
    config.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")
    markdown = trafilatura.extract(
        html, url=url, output_format="markdown", include_links=True, favor_recall=True, config=config
    ) or ""
    metadata = trafilatura.extract_metadata(html)
    title = metadata.title if metadata is not None and metadata.title else ""
    return title, markdown


def resolve_link(base: str, href: str) -> str | None:
    """`href` made absolute against `base`, or None if it is not a URL (`http://[`)."""
    try:
        return urljoin(base, href.strip())
    except ValueError:
        return None


def decode_text(body: bytes, charset: str | None) -> str:
    """`body` as text in `charset`; UTF-8 when the charset is unknown or no text encoding."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except (LookupError, ValueError):
        # LookupError: an unknown name, or a bytes codec such as base64 or zlib;
        # ValueError (UnicodeError): a codec that refuses errors="replace" (idna, undefined).
        return body.decode("utf-8", errors="replace")


class Browser:
    """Fetches pages under a `UrlPolicy` and keeps one session; `tools()` are its agent tools.

    `timeout` is the deadline of one `open` call, in seconds, across redirects, retries, reading
    and extraction. Requests go out over an asyncio httpx transport opened per call, so that the
    deadline cancels a network wait wherever it is (a thread blocked in a read could not be
    stopped); `proxy` (`"http://proxy:3128"`) sends them through a proxy. Proxy settings in
    the environment (`HTTPS_PROXY`) are not read.
    """

    def __init__(
        self,
        allow_hosts: Sequence[str] | None = None,
        *,
        policy: UrlPolicy | None = None,
        max_bytes: int = 2_000_000,
        timeout: float = 10.0,
        max_redirects: int = 5,
        lines_per_page: int = 20,
        max_line_chars: int = 300,
        max_lines: int = 2000,
        max_links: int = 1000,
        max_extract_tags: int = 8000,
        retry: RetryPolicy = RetryPolicy(attempts=3),
        proxy: str | None = None,
    ) -> None:
        self.policy = policy or UrlPolicy(tuple(allow_hosts) if allow_hosts is not None else None)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.lines_per_page = lines_per_page
        self.max_line_chars = max_line_chars
        self.max_lines = max_lines
        self.max_links = max_links
        self.max_extract_tags = max_extract_tags
        self.retry = retry
        self.proxy = proxy
        self.session = BrowserSession()

    # --- agent tools --------------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        return [OpenTool(self), ScrollTool(self), FindTool(self)]

    def fork(self, memo: dict[int, Any] | None = None) -> "Browser":
        memo = {} if memo is None else memo
        if id(self) not in memo:
            twin = copy.copy(self)
            twin.session = copy.deepcopy(self.session)
            memo[id(self)] = twin
        return memo[id(self)]

    def reset(self) -> None:
        self.session = BrowserSession()

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own connections."""

    # --- fetching -----------------------------------------------------------------------------

    async def load(self, url: str) -> tuple[Page, int]:
        """Fetch and read `url` within `timeout`, retrying network failures; (page, retries).

        Raises `PageRefused` for what the model should be told (the deadline included),
        `RetriesExhausted` when the network failed on every attempt.
        """
        try:
            return await asyncio.wait_for(with_retries(lambda: self.fetch(url), self.retry), self.timeout)
        except asyncio.TimeoutError:
            raise PageRefused(self._too_slow(url)) from None

    async def fetch(self, url: str) -> Page:
        """Fetch `url` once (following checked redirects) and extract its text; no deadline of
        its own (`load` gives one).

        Raises `PageRefused` for what the model should be told, `InfraError` for network
        failures worth retrying.
        """
        # A pool per call: connections belong to the event loop that opened them.
        async with httpx.AsyncHTTPTransport(verify=_ssl_context(), proxy=self.proxy) as transport:
            for _ in range(self.max_redirects + 1):
                # The policy resolves the host name, and a resolver call blocks.
                reason = await asyncio.to_thread(self.policy.check, url)
                if reason is not None:
                    raise PageRefused(reason)
                response = await self._send(transport, url)
                try:
                    if response.is_redirect:
                        location = resolve_link(url, response.headers["location"])
                        if location is None:
                            raise PageRefused(f"Error: {url} redirects to an invalid URL.")
                        url = location
                        continue
                    if response.status_code >= 500:
                        raise InfraError(f"{url} answered {response.status_code}")
                    if response.status_code >= 400:
                        raise PageRefused(f"Error: {url} answered {response.status_code} {response.reason_phrase}.")
                    body = await self._read(response, url)
                except httpx.TimeoutException as exc:
                    raise PageRefused(self._too_slow(url)) from exc
                except httpx.HTTPError as exc:
                    raise InfraError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
                finally:
                    await response.aclose()
                # Extraction is CPU work in a thread: its cost is bounded by the extraction
                # limits, since a thread cannot be stopped at the deadline.
                content_type = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
                return await asyncio.to_thread(self._page, url, body, content_type, response.charset_encoding)
        raise PageRefused(f"Refused: more than {self.max_redirects} redirects.")

    async def _send(self, transport: httpx.AsyncBaseTransport, url: str) -> httpx.Response:
        """Send a GET for `url` and return the response with its body still to read."""
        try:
            request = httpx.Request(
                "GET", url,
                headers={"User-Agent": "agentrl-browser/0.1", "Accept-Encoding": ACCEPT_ENCODING},
                extensions={"timeout": httpx.Timeout(self.timeout).as_dict()},
            )
        except (httpx.InvalidURL, UnicodeError) as exc:  # what the policy's parser accepts but
            # httpx's does not (UnicodeError: a host with invalid punycode, `xn--a.com`)
            raise PageRefused(f"Refused: '{url}' is not a valid URL ({exc}).") from exc
        try:
            # A bare transport rather than an httpx client: the client parses every Location
            # header itself, even when not following redirects, and raises on a hostile one.
            response = await transport.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise PageRefused(self._too_slow(url)) from exc
        except httpx.ConnectError as exc:
            if _host_not_found(exc):  # the model's mistake, not a network failure to retry
                raise PageRefused(f"Error: host '{request.url.host}' was not found.") from exc
            raise InfraError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise InfraError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
        response.request = request
        return response

    async def _read(self, response: httpx.Response, url: str) -> bytes:
        """The decoded body, at most `max_bytes`."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PageRefused(self._too_large(url))
        try:
            decoder = BoundedDecoder(response.headers.get("content-encoding", ""), self.max_bytes)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += decoder.feed(chunk)
        except BodyTooLarge as exc:
            raise PageRefused(self._too_large(url)) from exc
        except UnsupportedEncoding as exc:
            raise PageRefused(
                f"Refused: {url} is compressed with '{exc.encoding}', which the browser does not read."
            ) from exc
        except CorruptBody as exc:
            raise PageRefused(f"Error: {url} is not valid '{exc.encoding}' data.") from exc
        return bytes(body)

    def _page(self, url: str, body: bytes, content_type: str, charset: str | None) -> Page:
        """The readable page of a response body."""
        if content_type in ("text/html", "application/xhtml+xml"):
            html = decode_text(body, charset)
            return html_to_page(html, url, self.max_lines, self.max_links, self.max_extract_tags)
        if content_type.startswith("text/"):
            text = _CONTROL_CHARACTERS.sub("", decode_text(body, charset))
            lines = [line.rstrip() for line in text.splitlines() if line.strip()]
            return Page(url=url, title=url, lines=lines[: self.max_lines], links=[])
        raise PageRefused(f"Refused: {url} is {content_type}, not a text page.")

    def _too_slow(self, url: str) -> str:
        return f"Error: {url} did not answer within {self.timeout:g} s."

    def _too_large(self, url: str) -> str:
        return f"Refused: {url} is larger than the {self.max_bytes}-byte limit."

    # --- views --------------------------------------------------------------------------------

    def view(self, start: int | None = None) -> str:
        page = self.session.page
        if page is None:
            return "No page is open. Use open with a URL first."
        total = len(page.lines)
        if start is not None:
            self.session.position = max(0, min(start, max(total - 1, 0)))
        first = self.session.position
        last = min(first + self.lines_per_page, total)
        shown = [f"L{i + 1}: {self._cut(page.lines[i])}" for i in range(first, last)]
        header = f"[page] {page.title} ({page.url})\nlines {first + 1 if total else 0}-{last} of {total}"
        return "\n".join([header, *shown])

    def _cut(self, line: str) -> str:
        return line if len(line) <= self.max_line_chars else line[: self.max_line_chars] + " [...]"


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """The certificate store, loaded once per process: loading it takes tens of milliseconds,
    and every call opens a new transport."""
    return httpx.create_ssl_context()


def _host_not_found(error: BaseException) -> bool:
    """Whether a connection failed because DNS says the host does not exist (EAI_NONAME), as
    opposed to a temporary failure (EAI_AGAIN) or an unreachable server, which are retried."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return seen.errno == socket.EAI_NONAME
        seen = seen.__cause__ or seen.__context__
    return False


# --- the three tools -------------------------------------------------------------------------------


class OpenArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    target: str = pydantic.Field(min_length=1, description="A URL, or the number of a link on the current page.")


class ScrollArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    where: str = pydantic.Field("down", description='"down", "up", or a line number to jump to.')

    @pydantic.field_validator("where")
    @classmethod
    def _direction_or_line(cls, value: str) -> str:
        value = value.strip().lower() or "down"
        if value not in ("down", "up") and not value.isdigit():
            raise ValueError('must be "down", "up" or a line number')
        return value


class FindArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    pattern: str = pydantic.Field(min_length=1, description="Text to look for in the current page.")


class _BrowserTool(Tool):
    stateful = True

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def fork(self, memo: dict[int, Any] | None = None) -> Tool:
        return type(self)(self.browser.fork(memo))

    def reset(self) -> None:
        self.browser.reset()

    def close(self) -> None:
        self.browser.close()


class OpenTool(_BrowserTool):
    name = "open"
    description = "Open a web page by URL or by the number of a link on the current page."
    Args = OpenArgs
    primary_arg = "target"

    async def call(self, args: OpenArgs) -> ToolResult:
        browser = self.browser
        target = args.target.strip()
        if target.strip("[]").isdigit():
            page = browser.session.page
            n = int(target.strip("[]"))
            if page is None or not 1 <= n <= len(page.links):
                count = len(page.links) if page else 0
                return ToolResult.error(f"Error: no link [{n}] on this page (it has {count} links).")
            target = page.links[n - 1]
        try:
            page, retries = await browser.load(target)
        except PageRefused as exc:
            status = ToolStatus.REFUSED if str(exc).startswith("Refused") else ToolStatus.ERROR
            return ToolResult(str(exc), status, {"url": target})
        except RetriesExhausted as exc:
            # The model chose the site: one that stays down is part of the web it browses, an
            # observation like a 404, not an infrastructure failure (which would take the
            # trajectory out of training and let a policy dodge its reward by picking dead
            # links). The retries still count in tools/infra_retries.
            return ToolResult(
                f"Error: could not load {target} (network error).", ToolStatus.ERROR,
                {"url": target, "error": str(exc.last)}, infra_retries=exc.retries,
            )
        browser.session.page = page
        browser.session.history.append(page.url)
        return ToolResult(browser.view(0), data={"url": page.url, "lines": len(page.lines)}, infra_retries=retries)


class ScrollTool(_BrowserTool):
    name = "scroll"
    description = 'Scroll the current page: "down", "up", or a line number.'
    Args = ScrollArgs
    primary_arg = "where"

    async def call(self, args: ScrollArgs) -> ToolResult:
        browser, session = self.browser, self.browser.session
        if session.page is None:
            return ToolResult.error(browser.view())
        if args.where == "down":
            start = session.position + browser.lines_per_page
            if start >= len(session.page.lines):
                return ToolResult.error("Error: already at the end of the page.")
        elif args.where == "up":
            start = max(0, session.position - browser.lines_per_page)
        else:
            start = int(args.where) - 1
        return ToolResult(browser.view(start), data={"position": browser.session.position})


class FindTool(_BrowserTool):
    name = "find"
    description = "Find lines of the current page that contain a text."
    Args = FindArgs
    primary_arg = "pattern"
    max_matches = 10

    async def call(self, args: FindArgs) -> ToolResult:
        browser, page = self.browser, self.browser.session.page
        if page is None:
            return ToolResult.error(browser.view())
        needle = args.pattern.strip().lower()
        matches = [i for i, line in enumerate(page.lines) if needle in line.lower()]
        if not matches:
            return ToolResult(f"No match for '{args.pattern}' on this page.", data={"matches": 0})
        browser.session.position = matches[0]
        shown = [f"L{i + 1}: {browser._cut(page.lines[i])}" for i in matches[: self.max_matches]]
        more = f"\n({len(matches) - self.max_matches} more)" if len(matches) > self.max_matches else ""
        header = f"{len(matches)} match{'es' if len(matches) > 1 else ''} for '{args.pattern}':"
        return ToolResult("\n".join([header, *shown]) + more, data={"matches": len(matches)})
