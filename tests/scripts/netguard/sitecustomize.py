"""Test-only: a traced child process may open sockets to loopback only (tests run offline)."""

import ipaddress
import socket

_connect = socket.socket.connect


def _guarded(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = host == "localhost" or ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise RuntimeError(f"traced test script opened a socket to {address!r}: tests run offline")
    _connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded  # type: ignore[method-assign]
