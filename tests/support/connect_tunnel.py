"""A loopback forward proxy that only tunnels (HTTP CONNECT) to the metadata address.

Some HTTP stacks never send an absolute-form request to an HTTP proxy: Netty's proxy handler
(azure-core's default HTTP client in Java) always opens a CONNECT tunnel, even for plain
http. This stand-in for a corporate forward proxy accepts `CONNECT 169.254.169.254:80` and
splices the tunnel to the imds-proxy on loopback, so the request reaches it in origin form
with `Host: 169.254.169.254`, just as the pod's iptables redirect delivers it. Any other
target gets 403: nothing leaves loopback. Connections are bounded in time.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

from harness.background_server import BackgroundServer

METADATA_TARGET = b"169.254.169.254:80"
IDLE_TIMEOUT = 30.0
MAX_HEAD = 8192


class ConnectTunnel(BackgroundServer):
    """``with ConnectTunnel(target_port) as tunnel:`` then use ``tunnel.port`` as the proxy."""

    def __init__(self, target_port: int) -> None:
        self.tunnelled: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request, target_port)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.serve_in_background(self._server)

    def _handle(self, client: socket.socket, target_port: int) -> None:
        client.settimeout(IDLE_TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].split()
        if request_line[:2] != [b"CONNECT", METADATA_TARGET]:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.tunnelled.append(request_line[1])
        with socket.create_connection(("127.0.0.1", target_port), timeout=IDLE_TIMEOUT) as up:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                up.sendall(rest)
            back = threading.Thread(target=_pipe, args=(up, client), daemon=True)
            back.start()
            _pipe(client, up)
            back.join(IDLE_TIMEOUT)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side closes or stays idle; then half-close the sink."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
