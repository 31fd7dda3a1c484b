"""Length-prefixed messages over a stream socket, between an untrusted process and the trusted side.

One message: ``kind`` (1 byte) | header length (4 bytes, big-endian) | payload length (8 bytes) | a JSON
header | raw payload bytes. The trusted side never unpickles anything and bounds what it reads: a header
is at most :data:`MAX_HEADER` bytes and a payload at most the size the reader says it expects, so a hostile
peer can make a read fail but cannot make the trusted side allocate or execute what it sends.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAX_HEADER = 1 << 16
_PREFIX = struct.Struct(">cIQ")


class WireError(Exception):
    """The peer sent something that is not a well-formed message, or hung up."""


def send(sock: socket.socket, kind: bytes, header: dict[str, Any] | None = None, payload: bytes | memoryview = b"") -> None:
    head = json.dumps(header or {}, separators=(",", ":")).encode()
    view = memoryview(payload).cast("B")
    sock.sendall(_PREFIX.pack(kind, len(head), view.nbytes) + head)
    if view.nbytes:
        sock.sendall(view)


def _recv_exact(sock: socket.socket, n: int, into: bytearray | None = None) -> bytearray:
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise WireError(f"the peer hung up after {got} of {n} bytes")
        got += k
    return buf


def recv(sock: socket.socket, max_payload: int) -> tuple[bytes, dict[str, Any], bytearray]:
    """One message: (kind, header, payload). Raises :class:`WireError` on a malformed or oversized one."""
    kind, hlen, plen = _PREFIX.unpack(bytes(_recv_exact(sock, _PREFIX.size)))
    if hlen > MAX_HEADER:
        raise WireError(f"header of {hlen} bytes exceeds {MAX_HEADER}")
    if plen > max_payload:
        raise WireError(f"payload of {plen} bytes exceeds the {max_payload} expected")
    try:
        header = json.loads(bytes(_recv_exact(sock, hlen))) if hlen else {}
    except ValueError as e:
        raise WireError(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    return kind, header, _recv_exact(sock, plen) if plen else bytearray()


def connect(path: str, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock
