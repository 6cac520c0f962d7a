"""Fake PostgreSQL servers that accept connections and then never answer."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _handshake(conn: socket.socket) -> None:
    """Answer the start-up like a trust-auth server, up to ReadyForQuery."""
    while True:
        length = struct.unpack("!I", _recv_exact(conn, 4))[0]
        body = _recv_exact(conn, length - 4)
        code = struct.unpack("!I", body[:4])[0]
        if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "not here"
            conn.sendall(b"N")
            continue
        break
    conn.sendall(_message(b"R", struct.pack("!I", 0))  # AuthenticationOk
                 + _message(b"S", b"server_version\x0016.0\x00")
                 + _message(b"S", b"client_encoding\x00UTF8\x00")
                 + _message(b"K", struct.pack("!II", 4242, 1))
                 + _message(b"Z", b"I"))


@contextmanager
def silent_server(handshake: bool) -> Iterator[int]:
    """A listener on 127.0.0.1 whose port is yielded.

    ``handshake=False``: accepts and reads, never writes a byte (a server that hangs
    at once). ``handshake=True``: completes the start-up, then reads queries and never
    answers (a server that stops answering after the connection is made).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        try:
            if handshake:
                _handshake(conn)
            while not stop.is_set() and conn.recv(65536):
                pass  # read everything, say nothing
        except OSError:
            pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()
