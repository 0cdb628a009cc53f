from __future__ import annotations

import socket

import pytest


def test_non_loopback_socket_fails_the_test():
    with pytest.raises(RuntimeError, match="non-loopback"), socket.socket() as s:
        s.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed


def test_non_loopback_name_resolution_fails():
    with pytest.raises(RuntimeError, match="non-loopback host"):
        socket.getaddrinfo("api.openai.com", 443)


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket() as client:
            client.connect(server.getsockname())
