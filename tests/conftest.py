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


# -- no network: a socket to anything but loopback fails the test ------------------------------
import ipaddress  # noqa: E402
import socket  # noqa: E402

CONNECTIONS: list[object] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback_host(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: object) -> None:
    CONNECTIONS.append(address)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback_host(host):
            raise RuntimeError(f"test opened a socket to non-loopback address {address!r}: tests run offline")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if host is not None and not _is_loopback_host(host if not isinstance(host, bytes) else host.decode()):
        raise RuntimeError(f"test resolved non-loopback host {host!r}: tests run offline")
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


@pytest.fixture
def connections() -> Callable[[], list[object]]:
    """A function listing the addresses connected to since the test began (loopback only)."""
    start = len(CONNECTIONS)
    return lambda: list(CONNECTIONS[start:])


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> object:
    """Unclosed sockets and transports warn when collected: collect after each test, so the
    warning (an error here) names the test that leaked them instead of a later one."""
    import gc

    yield
    gc.collect()


@pytest.fixture
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_API_KEY, OPENAI_BASE_URL or DRY_RUN from the environment the tests run in."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DRY_RUN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(no_openai_env: None) -> Callable[[list[str]], int]:
    """``docingest ARGV...`` in process: its exit code; the terminal output is dropped (messages go
    to stderr, for capsys)."""
    import io

    from rich.console import Console

    from docingest.cli import main

    return lambda argv: main(argv, console=Console(file=io.StringIO(), width=120))
