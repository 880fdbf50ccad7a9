"""Client sockets of the generator: non-blocking, TCP_NODELAY, kernel receive timestamps."""

from __future__ import annotations

import socket

from bench.loadgen.kernel import enable_rx_timestamps


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--addr: want HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def client_socket(family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket with Nagle off and receive timestamps on."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_rx_timestamps(sock)
    return sock


def connect_blocking(addr: tuple[str, int], timeout_s: float) -> socket.socket:
    """A connected client socket (waiting up to ``timeout_s``), left non-blocking."""
    sock = socket.create_connection(addr, timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_rx_timestamps(sock)
    sock.setblocking(False)
    return sock


def send_all(sock: socket.socket, data: bytes) -> None:
    """Write ``data`` on a non-blocking socket; the rare short write finishes blocking."""
    sent = sock.send(data)
    if sent < len(data):
        sock.setblocking(True)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)
