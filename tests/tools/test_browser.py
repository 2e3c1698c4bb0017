"""The browser against a real HTTP server on loopback (explicitly allowlisted)."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrl.tools.base import ToolStatus
from agentrl.tools.browser import Browser, FindArgs, OpenArgs, ScrollArgs
from agentrl.tools.retry import RetryPolicy
from agentrl.tools.url_policy import UrlPolicy

PAGES = {
    "/wiki/Bekora": (
        "<html><head><title>Bekora Talim</title></head><body><main><h1>Bekora Talim</h1>"
        "<p>Bekora Talim is a painter. She was born in <a href='/wiki/Lumeva'>Lumeva</a>.</p>"
        "<p>She works for <a href='/wiki/Zantrix'>Zantrix</a>.</p></main></body></html>"
    ),
    "/wiki/Lumeva": (
        "<html><head><title>Lumeva</title></head><body><main><h1>Lumeva</h1>"
        "<p>Lumeva is a city in Oskaria.</p></main></body></html>"
    ),
    "/long": "<html><head><title>Long</title></head><body><main>"
    + "".join(f"<p>Paragraph number {i} of the long page.</p>" for i in range(1, 46))
    + "</main></body></html>",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path in PAGES:
            self._send(200, PAGES[self.path].encode())
        elif self.path == "/big":
            self._send(200, b"<p>" + b"x" * 5000 + b"</p>")
        elif self.path == "/big-chunked":  # no Content-Length: the size cap applies while reading
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"y" * 1000)
            self.close_connection = True
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, b"<p>late</p>")
        elif self.path == "/image":
            self._send(200, b"\x89PNG", "image/png")
        else:
            self._send(404, b"not found")

    def _send(self, status, body, content_type="text/html; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _host(url: str) -> str:
    return url.split("//", 1)[1]


def _run(tool, args):
    return asyncio.run(tool.call(args))


@pytest.fixture
def browser(server):
    b = Browser(allow_hosts=[_host(server)], max_bytes=3000, timeout=1.0, lines_per_page=20,
                retry=RetryPolicy(attempts=2, base_delay=0.01))
    yield b
    b.close()


def test_open_follow_link_by_number(browser, server):
    open_, _, _ = browser.tools()
    result = _run(open_, OpenArgs(target=server + "/wiki/Bekora"))
    assert result.status is ToolStatus.OK
    lines = result.text.splitlines()
    assert lines[0] == f"[page] Bekora Talim ({server}/wiki/Bekora)"
    assert "L2: Bekora Talim is a painter. She was born in Lumeva [1]." in lines
    followed = _run(open_, OpenArgs(target="1"))
    assert "L2: Lumeva is a city in Oskaria." in followed.text.splitlines()
    missing = _run(open_, OpenArgs(target="9"))
    assert missing.status is ToolStatus.ERROR and missing.text == "Error: no link [9] on this page (it has 0 links)."


def test_scroll_and_find(browser, server):
    open_, scroll, find = browser.tools()
    first = _run(open_, OpenArgs(target=server + "/long"))
    assert "lines 1-20 of 45" in first.text and "L20: Paragraph number 20" in first.text
    second = _run(scroll, ScrollArgs())
    assert "lines 21-40 of 45" in second.text
    assert "lines 1-20" in _run(scroll, ScrollArgs(where="up")).text
    assert "lines 30-45 of 45" in _run(scroll, ScrollArgs(where="30")).text
    assert _run(scroll, ScrollArgs()).text == "Error: already at the end of the page."
    found = _run(find, FindArgs(pattern="number 33 "))
    assert found.text == "1 match for 'number 33 ':\nL33: Paragraph number 33 of the long page."
    assert "No match for 'zebra'" in _run(find, FindArgs(pattern="zebra")).text


def test_refuses_url_outside_the_allowlist(browser):
    open_ = browser.tools()[0]
    result = _run(open_, OpenArgs(target="http://example.com/"))
    assert result.status is ToolStatus.REFUSED
    assert result.text == "Refused: host 'example.com' is not in the allowlist."


def test_refuses_file_urls(browser):
    result = _run(browser.tools()[0], OpenArgs(target="file:///etc/passwd"))
    assert result.status is ToolStatus.REFUSED
    assert result.text == "Refused: only http and https URLs can be opened, not 'file:'."


def test_refuses_redirect_to_a_private_address(server):
    # '*' admits any public host, but private addresses need an exact entry: the redirect from
    # the allowlisted test server to the cloud metadata address is refused.
    browser = Browser(allow_hosts=[_host(server), "*"])
    result = _run(browser.tools()[0], OpenArgs(target=server + "/redirect?to=http://169.254.169.254/latest/meta-data"))
    assert result.status is ToolStatus.REFUSED
    assert result.text == "Refused: host '169.254.169.254' resolves to a private address (169.254.169.254)."
    # Another port on loopback is not the allowlisted server either.
    other = _run(browser.tools()[0], OpenArgs(target=server + "/redirect?to=http://localhost:1/"))
    assert other.status is ToolStatus.REFUSED and "private address" in other.text
    browser.close()


def test_private_addresses_without_allowlist_are_refused(server):
    browser = Browser()
    result = _run(browser.tools()[0], OpenArgs(target=server + "/wiki/Lumeva"))
    assert result.status is ToolStatus.REFUSED and "resolves to a private address (127.0.0.1)" in result.text
    assert UrlPolicy().check("http://10.1.2.3/") == "Refused: host '10.1.2.3' resolves to a private address (10.1.2.3)."
    browser.close()


def test_refuses_oversized_pages(browser, server):
    open_ = browser.tools()[0]
    declared = _run(open_, OpenArgs(target=server + "/big"))
    assert declared.status is ToolStatus.REFUSED
    assert declared.text == f"Refused: {server}/big is larger than the 3000-byte limit."
    streamed = _run(open_, OpenArgs(target=server + "/big-chunked"))
    assert streamed.status is ToolStatus.REFUSED and "larger than the 3000-byte limit" in streamed.text


def test_timeouts_404_and_binary_content_are_results(browser, server):
    open_ = browser.tools()[0]
    slow = _run(open_, OpenArgs(target=server + "/slow"))
    assert slow.status is ToolStatus.ERROR and slow.text == f"Error: {server}/slow did not answer within 1 s."
    missing = _run(open_, OpenArgs(target=server + "/nope"))
    assert missing.status is ToolStatus.ERROR and missing.text == f"Error: {server}/nope answered 404 Not Found."
    image = _run(open_, OpenArgs(target=server + "/image"))
    assert image.status is ToolStatus.REFUSED and "image/png, not a text page" in image.text


def test_a_site_that_stays_down_is_an_error_result_after_retries(browser):
    """The model chose the site, so a dead one is an observation, not an infrastructure
    failure (which would take the trajectory out of training)."""
    browser.policy = UrlPolicy(("127.0.0.1:1",))
    result = _run(browser.tools()[0], OpenArgs(target="http://127.0.0.1:1/"))
    assert result.status is ToolStatus.ERROR and result.infra_retries == 1
    assert result.text == "Error: could not load http://127.0.0.1:1/ (network error)."


def test_fork_copies_the_session(browser, server):
    open_, scroll, _ = browser.tools()
    _run(open_, OpenArgs(target=server + "/long"))
    memo: dict = {}
    forked_open, forked_scroll = open_.fork(memo), scroll.fork(memo)
    assert forked_open.browser is forked_scroll.browser is not browser
    _run(forked_scroll, ScrollArgs())
    assert forked_open.browser.session.position == 20 and browser.session.position == 0
