from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest


def _png(width: int, height: int) -> bytes:
    """A real PNG (RGB, a gradient with a little texture), built with zlib and struct only."""
    raw = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in ((x * 7 + y) % 256, (y * 5) % 256, (x * y) % 256))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture
def make_png() -> Callable[[int, int], bytes]:
    return _png
