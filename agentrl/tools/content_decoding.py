"""Decompress an HTTP body as it streams in, never producing more bytes than a limit.

httpx undoes `Content-Encoding` itself, but a whole network chunk at a time and with no bound on
what one chunk inflates to: a 1 kB body sent as `Content-Encoding: gzip, gzip` becomes a
gigabyte in memory before any size check can look at it. `BoundedDecoder` takes the raw bytes
instead and asks zlib for at most `limit + 1` bytes from every layer, so refusing a compression
bomb costs about `limit` bytes per layer, not what the bomb would have become.

Only the encodings the browser asks for (`ACCEPT_ENCODING`) are read; a server that sends
another one (`br`, `zstd`, ...) is refused rather than trusted.
"""

from __future__ import annotations

import zlib

#: What the browser sends as `Accept-Encoding`: the encodings `BoundedDecoder` can bound.
ACCEPT_ENCODING = "gzip, deflate"


class BodyTooLarge(Exception):
    """The decoded body (or one of its layers) is larger than the limit."""


class UnsupportedEncoding(Exception):
    """The server used a content encoding that the browser did not ask for."""

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


class CorruptBody(Exception):
    """The body is not valid data of the encoding the server declared."""

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


class _Inflater:
    """One layer of gzip or deflate, whose total output may not exceed `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.produced = 0
        self._zlib: zlib._Decompress | None = None
        self._pending = b""  # the first bytes of a deflate body, until its header can be read
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def inflate(self, data: bytes) -> bytes:
        if self._zlib is None:
            # 'deflate' means zlib-wrapped data, but some servers send raw deflate: the two-byte
            # zlib header (a checksum over both bytes) tells them apart.
            self._pending += data
            if len(self._pending) < 2:
                return b""
            data, self._pending = self._pending, b""
            wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        room = self.limit - self.produced
        try:
            out = self._zlib.decompress(data, room + 1)
        except zlib.error as exc:
            raise CorruptBody(self.encoding) from exc
        self.produced += len(out)
        if self.produced > self.limit or self._zlib.unconsumed_tail:
            raise BodyTooLarge()
        return out


class BoundedDecoder:
    """Undo `Content-Encoding` chunk by chunk; raises `BodyTooLarge` past `limit` bytes.

        decoder = BoundedDecoder(response.headers.get("content-encoding", ""), limit=2_000_000)
        for chunk in response.iter_raw():
            body += decoder.feed(chunk)
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.produced = 0
        # The server applied the listed encodings in order, so they are undone in reverse.
        encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
        self._layers: list[_Inflater] = []
        for encoding in reversed(encodings):
            if encoding == "identity":
                continue
            if encoding not in ("gzip", "x-gzip", "deflate"):
                raise UnsupportedEncoding(encoding)
            self._layers.append(_Inflater(encoding, limit))

    def feed(self, chunk: bytes) -> bytes:
        # The raw bytes are bounded too: data after the end of a gzip stream is kept by zlib
        # (`unused_data`), and a body of empty blocks would otherwise never end.
        self.received += len(chunk)
        if self.received > self.limit:
            raise BodyTooLarge()
        data = chunk
        for layer in self._layers:
            data = layer.inflate(data)
        self.produced += len(data)
        if self.produced > self.limit:
            raise BodyTooLarge()
        return data
