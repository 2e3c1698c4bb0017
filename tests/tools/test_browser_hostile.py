"""The browser against hostile pages and model-written URLs, on real loopback HTTP servers.

A hostile server (allowlisted by its exact `host:port`) serves broken charsets, unparseable links
and redirects, slow drips and compression bombs; a second "private" server on loopback stands for
a service of the training machine and must never be reached. Every call must come back as a
`ToolResult` (the model's or the page's fault is never an exception, which the env would count as
an infrastructure failure), within the browser's one deadline per call.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrl.tools.base import ToolResult, ToolStatus
from agentrl.tools.browser import Browser, OpenArgs
from agentrl.tools.content_decoding import BodyTooLarge, BoundedDecoder, UnsupportedEncoding
from agentrl.tools.retry import RetryPolicy
from agentrl.tools.url_policy import UrlPolicy

PAGE = "<html><head><title>Fine</title></head><body><main><p>A fine page about Lumeva.</p></main></body></html>"
BOMB_BYTES = 64 * 2**20  # what the double-gzip bomb inflates to


class _Server:
    """A loopback HTTP server in a thread that counts the requests it receives."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.hits: list[str] = []
        owner = self

        class Counting(handler):  # type: ignore[misc, valid-type]
            def do_GET(self):  # noqa: N802
                owner.hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Private(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"<p>secret</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _double_gzip_bomb() -> bytes:
    return gzip.compress(gzip.compress(b"\0" * BOMB_BYTES, 9), 9)


class _Hostile(BaseHTTPRequestHandler):
    bomb = b""  # set by the fixture: building it takes a moment

    def do_GET(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if path == "/fine":
            self._send(PAGE.encode())
        elif path == "/charset":  # ?name=base64: a codec that exists but does not decode bytes to text
            self._send(PAGE.encode(), f"text/html; charset={query.split('=', 1)[1]}")
        elif path == "/bad-links":
            self._send(
                b"<html><head><title>Links</title></head><body><main><p>Start "
                b"<a href='http://['>broken</a>, <a href='javascript:alert(1)'>script</a>, "
                b"<a href='data:text/html,hi'>data</a>, <a href='/a&#1;b'>control</a> and "
                b"<a href='/fine'>the fine page</a>.</p></main></body></html>"
            )
        elif path == "/location":  # ?to=...: a redirect to whatever follows, byte for byte
            self.send_response(302)
            self.send_header("Location", _unquote_controls(query.split("=", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/nul-bytes":
            self._send(b"<html><body><p>before\x00after \x01\x02 text</p></body></html>")
        elif path == "/xml-declaration":
            self._send(b'<?xml version="1.0" encoding="utf-8"?><html><body><p>declared</p></body></html>')
        elif path == "/empty":
            self._send(b"")
        elif path == "/brotli":  # an encoding the browser did not ask for
            self._send(b"\x1b\x03\x00\xf8\xa5\x00", headers={"Content-Encoding": "br"})
        elif path == "/bad-gzip":
            self._send(b"\x1f\x8b\x08\x00not gzip at all", headers={"Content-Encoding": "gzip"})
        elif path == "/gzip":
            self._send(gzip.compress(PAGE.encode()), headers={"Content-Encoding": "gzip"})
        elif path == "/deflate":
            self._send(zlib.compress(PAGE.encode()), headers={"Content-Encoding": "deflate"})
        elif path == "/raw-deflate":
            packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            self._send(packer.compress(PAGE.encode()) + packer.flush(), headers={"Content-Encoding": "deflate"})
        elif path == "/gzip-bomb":
            self._send(self.bomb, headers={"Content-Encoding": "gzip, gzip"})
        elif path == "/drip":  # one byte at a time, for far longer than any deadline in these tests
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self._drip(120)
        elif path == "/drip-headers":  # the response's headers, one byte at a time
            self._drip(120, first=b"HTTP/1.1 200 OK\r\nX-Slow: ")
        elif path == "/drip-then-drop":  # a promised body cut off after 1.5 s: a retried network error
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self._drip(6)
        elif path == "/many-links":  # 1.8 MB, 40k links: trafilatura alone takes tens of seconds
            links = "".join(f"<p><a href='/p/{i}'>link {i}</a> text</p>" for i in range(40_000))
            self._send(f"<html><head><title>Links</title></head><body><main>{links}</main></body></html>".encode())
        elif path == "/many-elements":  # 600 kB, 150k elements: trafilatura takes ~150 µs each
            self._send(b"<html><body>" + b"<p>a" * 150_000 + b"</body></html>")
        elif path == "/many-attributes":  # libxml2's time is quadratic in one tag's attributes
            attributes = " ".join(f"a{i}='<>'" for i in range(50_000))
            self._send(f"<html><body><p {attributes}>Lumeva is a city.</p></body></html>".encode())
        else:
            self._send(b"not found", status=404)

    def _drip(self, count: int, first: bytes = b"") -> None:
        """Write `first`, then one byte every 0.25 s, `count` times; then hang up."""
        try:
            self.wfile.write(first)
            for _ in range(count):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.25)
        except OSError:
            pass  # the browser hung up
        self.close_connection = True

    def _send(self, body: bytes, content_type: str = "text/html; charset=utf-8", status: int = 200,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _unquote_controls(text: str) -> str:
    """`%01`-style escapes of control characters become the raw characters (to send them)."""
    return "".join(chr(int(part[:2], 16)) + part[2:] if i else part for i, part in enumerate(text.split("%")))


@pytest.fixture(scope="module")
def private():
    server = _Server(_Private)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hostile():
    _Hostile.bomb = _double_gzip_bomb()
    server = _Server(_Hostile)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def private_is_never_hit(private):
    yield
    assert private.hits == [], f"the private server was reached: {private.hits}"


def _browser(hostile: _Server, *extra_hosts: str, **options) -> Browser:
    options.setdefault("timeout", 5.0)
    options.setdefault("retry", RetryPolicy(attempts=3, base_delay=0.01))
    return Browser(allow_hosts=[hostile.host, *extra_hosts], **options)


def _open(browser: Browser, target: str) -> ToolResult:
    result = asyncio.run(browser.tools()[0].call(OpenArgs(target=target)))
    assert isinstance(result, ToolResult)
    assert "\n" not in result.text or result.ok, f"an error result is one line: {result.text!r}"
    return result


# --- the model's URLs and the page's links and redirects are results, never exceptions -------------


@pytest.mark.parametrize(
    "target",
    [
        "data:text/html,<p>hi</p>",
        "javascript:alert(document.cookie)",
        "{url}/fi\x00ne",
        "{url}/fi\nne",
        "\x01{url}/fine",
        "{url}/fine\x7f",
        "http://[",
        "http://[::1",
        "{url}:99999/",
        "http://a..b/",
        "http://" + "a" * 64 + ".org/",
        "http://xn--a.org/",
        "http://256.256.256.256/",
    ],
)
def test_model_written_urls_are_results(hostile, target):
    browser = _browser(hostile, "*")  # any public host: the checks past the allowlist are tested
    result = _open(browser, target.format(url=hostile.url))
    assert result.status in (ToolStatus.REFUSED, ToolStatus.ERROR), result.text
    browser.close()


def test_control_characters_are_refused_before_any_request(hostile):
    browser = _browser(hostile)
    hits = len(hostile.hits)
    result = _open(browser, f"{hostile.url}/fi\x00ne")
    assert result.status is ToolStatus.REFUSED
    assert result.text == "Refused: the URL contains a control character (\\x00)."
    assert len(hostile.hits) == hits
    browser.close()


def test_a_host_that_does_not_exist_is_the_models_error_not_retried(hostile):
    # RFC 6761 reserves .invalid: a resolver answers "no such name", not a temporary failure.
    try:
        socket.getaddrinfo("no-such-host.invalid", None)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver answers {exc} for a .invalid name")
    else:
        pytest.skip("this machine's resolver answers for a .invalid name")
    browser = _browser(hostile, "*")
    result = _open(browser, "http://no-such-host.invalid/wiki/Lumeva")
    assert result.status is ToolStatus.ERROR and result.infra_retries == 0
    assert result.text == "Error: host 'no-such-host.invalid' was not found."
    browser.close()


@pytest.mark.parametrize("codec", ["base64", "zlib", "rot13", "hex", "idna", "undefined", "no-such-codec"])
def test_a_charset_that_is_not_a_text_encoding_falls_back_to_utf8(hostile, codec):
    browser = _browser(hostile)
    result = _open(browser, f"{hostile.url}/charset?name={codec}")
    assert result.status is ToolStatus.OK, result.text
    assert "A fine page about Lumeva." in result.text
    browser.close()


def test_unparseable_links_are_shown_without_a_number(hostile):
    browser = _browser(hostile)
    result = _open(browser, f"{hostile.url}/bad-links")
    assert result.status is ToolStatus.OK, result.text
    assert "broken," in result.text  # the text of the link that does not parse, with no number
    assert browser.session.page is not None
    assert f"{hostile.url}/fine" in browser.session.page.links
    assert "http://[" not in browser.session.page.links
    # Following the script and data links is a refusal, not an exception.
    links = browser.session.page.links
    for scheme in ("javascript:", "data:"):
        number = next(i for i, link in enumerate(links) if link.startswith(scheme)) + 1
        assert _open(browser, str(number)).status is ToolStatus.REFUSED
    browser.close()


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://[", "Error: {url}/location?to=http://[ redirects to an invalid URL."),
        ("data:text/html,hi", "Refused: only http and https URLs can be opened, not 'data:'."),
        ("javascript:alert(1)", "Refused: only http and https URLs can be opened, not 'javascript:'."),
        ("/fi%01ne", "Refused: the URL contains a control character (\\x01)."),
    ],
)
def test_unusable_redirects_are_results(hostile, location, expected):
    browser = _browser(hostile)
    result = _open(browser, f"{hostile.url}/location?to={location}")
    assert result.status in (ToolStatus.REFUSED, ToolStatus.ERROR)
    assert result.text == expected.format(url=hostile.url)
    browser.close()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "localhost", "127.1", "0x7f000001", "2130706433", "0.0.0.0",
        "[::1]", "[::127.0.0.1]", "[::ffff:127.0.0.1]", "[2002:7f00:1::]", "[::]",
    ],
)
def test_redirects_to_the_private_server_are_refused_in_every_spelling(hostile, private, host):
    # '*' admits any public host; the private server's port is on loopback and never named exactly.
    browser = _browser(hostile, "*")
    result = _open(browser, f"{hostile.url}/location?to=http://{host}:{private.port}/")
    assert result.status is ToolStatus.REFUSED, result.text
    assert "private address" in result.text
    browser.close()


@pytest.mark.parametrize(
    ("path", "shown"),
    [("/nul-bytes", "L1: beforeafter text"), ("/xml-declaration", "L1: declared"), ("/empty", "lines 0-0 of 0")],
)
def test_malformed_pages_are_read(hostile, path, shown):
    browser = _browser(hostile)
    result = _open(browser, hostile.url + path)
    assert result.status is ToolStatus.OK, result.text
    assert result.text.splitlines()[-1] == shown
    browser.close()


def test_unrequested_encodings_are_refused(hostile):
    browser = _browser(hostile)
    result = _open(browser, f"{hostile.url}/brotli")
    assert result.status is ToolStatus.REFUSED
    assert result.text == f"Refused: {hostile.url}/brotli is compressed with 'br', which the browser does not read."
    bad = _open(browser, f"{hostile.url}/bad-gzip")
    assert bad.status is ToolStatus.ERROR and bad.text == f"Error: {hostile.url}/bad-gzip is not valid 'gzip' data."
    browser.close()


@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/raw-deflate"])
def test_compressed_pages_are_read(hostile, path):
    browser = _browser(hostile)
    result = _open(browser, hostile.url + path)
    assert result.status is ToolStatus.OK, result.text
    assert "A fine page about Lumeva." in result.text
    browser.close()


# --- costs: memory, time, retries ----------------------------------------------------------------


def test_a_compression_bomb_is_refused_while_decompressing(hostile):
    # 980-ish bytes on the wire inflate to 64 MiB; the browser must stop after max_bytes, so the
    # memory it allocates stays near the limit (measured with tracemalloc, not with a clock).
    browser = _browser(hostile, max_bytes=100_000)
    assert len(_Hostile.bomb) < 100_000
    tracemalloc.start()
    try:
        result = _open(browser, f"{hostile.url}/gzip-bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is ToolStatus.REFUSED
    assert result.text == f"Refused: {hostile.url}/gzip-bomb is larger than the 100000-byte limit."
    assert peak < 16 * 2**20, f"decoding the bomb allocated {peak / 2**20:.0f} MiB"
    browser.close()


@pytest.mark.parametrize("path", ["drip", "drip-headers"])
def test_a_slow_drip_ends_at_the_deadline(hostile, path):
    # One byte every 0.25 s, of the body or of the headers, never trips a read timeout; the
    # call has one 2 s deadline in all. The bound is generous (the old behaviour took the whole
    # 30 s drip, three times over). While headers drip, no response object exists yet to close:
    # the wait must be cancelled where it is. `_open` runs the call in its own event loop, which
    # on exit waits for any thread the call left behind, so a thread still reading past the
    # deadline would show here too.
    browser = _browser(hostile, timeout=2.0)
    start = time.monotonic()
    result = _open(browser, f"{hostile.url}/{path}")
    assert time.monotonic() - start < 15
    assert result.status is ToolStatus.ERROR
    assert result.text == f"Error: {hostile.url}/{path} did not answer within 2 s."
    browser.close()


def test_retries_share_the_call_deadline(hostile):
    # Each attempt fails after at least 1.5 s, so within a 2 s deadline at most two attempts
    # can start however slow the machine is (three retries per call would be the old behaviour).
    browser = _browser(hostile, timeout=2.0, retry=RetryPolicy(attempts=3, base_delay=0.01))
    before = len(hostile.hits)
    result = _open(browser, f"{hostile.url}/drip-then-drop")
    assert len(hostile.hits) - before <= 2
    assert result.status is ToolStatus.ERROR
    assert result.text == f"Error: {hostile.url}/drip-then-drop did not answer within 2 s."
    browser.close()


def test_a_page_of_40k_links_is_read_in_bounded_time(hostile):
    browser = _browser(hostile, timeout=60.0)
    start = time.monotonic()
    result = _open(browser, f"{hostile.url}/many-links")
    assert time.monotonic() - start < 15  # trafilatura alone took 27 s on this page
    assert result.status is ToolStatus.OK, result.text
    assert "link 0 [1] text" in result.text
    page = browser.session.page
    assert page is not None and len(page.links) <= browser.max_links
    browser.close()


def test_a_page_of_150k_elements_is_read_in_bounded_time(hostile):
    browser = _browser(hostile, timeout=60.0)
    start = time.monotonic()
    result = _open(browser, f"{hostile.url}/many-elements")
    assert time.monotonic() - start < 15  # trafilatura alone took over 20 s on this page
    assert result.status is ToolStatus.OK, result.text
    assert "lines 1-20 of 2000" in result.text and result.text.endswith("L20: a")
    browser.close()


def test_a_tag_with_50k_attributes_is_read_in_bounded_time(hostile):
    browser = _browser(hostile, timeout=60.0)
    start = time.monotonic()
    result = _open(browser, f"{hostile.url}/many-attributes")
    assert time.monotonic() - start < 15  # the HTML parsers took 40-50 s on this page
    assert result.status is ToolStatus.OK, result.text
    assert result.text.splitlines()[-1] == "L1: Lumeva is a city."
    browser.close()


# --- the policy itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]", "[::169.254.169.254]", "[::ffff:169.254.169.254]", "[2002:a9fe:a9fe::]",
        "[64:ff9b::7f00:1]", "[fec0::1]", "[::]", "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    ],
)
def test_ipv6_forms_of_private_addresses_are_refused(host):
    reason = UrlPolicy(("*",)).check(f"http://{host}/latest/meta-data")
    assert reason is not None and "private address" in reason


def test_public_ipv6_addresses_pass():
    assert UrlPolicy(("*",)).check("http://[2606:4700:4700::1111]/") is None
    assert UrlPolicy(("*",)).check("http://[64:ff9b::808:808]/") is None  # NAT64 of 8.8.8.8


# --- the bounded decoder on its own --------------------------------------------------------------


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: _deflate(data, -zlib.MAX_WBITS)),  # raw deflate, as some servers send
        ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
        ("identity", lambda data: data),
    ],
)
def test_the_decoder_reads_byte_by_byte(encoding, encode):
    # One byte per chunk: the deflate header check must wait for its two bytes.
    page = PAGE.encode() * 20
    decoder = BoundedDecoder(encoding, limit=len(page))
    wire = encode(page)
    assert b"".join(decoder.feed(wire[i : i + 1]) for i in range(len(wire))) == page


def test_the_decoder_stops_every_layer_at_the_limit():
    bomb = _double_gzip_bomb()
    decoder = BoundedDecoder("gzip, gzip", limit=10_000)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            decoder.feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated to refuse a {BOMB_BYTES}-byte bomb at a 10 kB limit"
    with pytest.raises(UnsupportedEncoding):
        BoundedDecoder("gzip, zstd", limit=10)
