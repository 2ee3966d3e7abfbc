"""The Entra ID connection honours HTTPS_PROXY and NO_PROXY, as MSAL/requests users expect
(egress through a corporate proxy is common in clusters)."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.background_server import POLL_INTERVAL
from harness.fake_entra import FakeEntra
from harness.proxy_process import running_proxy

ARM = "https://management.azure.com/"


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal HTTP CONNECT proxy on loopback that counts the tunnels it opened."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        super().__init__(("127.0.0.1", 0), _Tunnel)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        host, port = target.rsplit(":", 1)
        assert method == "CONNECT" and host == "127.0.0.1"  # loopback only
        server = self.server
        assert isinstance(server, ConnectProxy)
        server.tunnels.append(target)
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            sockets = [self.request, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    server = ConnectProxy()
    thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_exchange_goes_through_https_proxy(
    fake_entra: FakeEntra, connect_proxy: ConnectProxy, tmp_path: Path
) -> None:
    env = {**fake_entra.env(), "HTTPS_PROXY": connect_proxy.url}
    with running_proxy(env, tmp_path) as proxy:
        response = requests.get(proxy.url(ARM), headers={"Metadata": "true"}, timeout=20)
        assert response.status_code == 200
    assert connect_proxy.tunnels, "the proxy did not tunnel through HTTPS_PROXY"
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_no_proxy_bypasses_it(
    fake_entra: FakeEntra, connect_proxy: ConnectProxy, tmp_path: Path
) -> None:
    env = {**fake_entra.env(), "HTTPS_PROXY": connect_proxy.url, "NO_PROXY": "127.0.0.1"}
    with running_proxy(env, tmp_path) as proxy:
        response = requests.get(proxy.url(ARM), headers={"Metadata": "true"}, timeout=20)
        assert response.status_code == 200
    assert connect_proxy.tunnels == []
