"""Answers a real etcd will not give (garbage, truncation, silence), from a
fake server: status 3, one line naming the endpoint, never a traceback, and
never a wait longer than the lock would live."""

import errno
import os
import socket
import time

import pytest

from fakeetcd import FakeEtcd

ANSWERS = {
    "garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
    "html error": b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 12\r\n\r\n<html></html>"[:-1],
    "json but not etcd's": b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n[]",
    "truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"action\":",
    "closed at once": b"",
    "not http": b"SSH-2.0-OpenSSH_9.2\r\n",
    # A size that steps back: once, the parser went round for ever.
    "negative chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n",
    "too many chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"1\r\n \r\n" * 40000 + b"0\r\n\r\n",
}


@pytest.fixture
def fake():
    servers = []

    def start(answer):
        server = FakeEtcd(answer)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("api", ["v2", "v3", "auto"])
@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_bad_answers_are_one_error_line(fake, spawn, answer, api):
    server = fake(ANSWERS[answer])
    helper = spawn(port=server.port, api=api, args=())
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert "127.0.0.1:%d" % server.port in lines[0]
    assert "Traceback" not in helper.stderr()


def test_nothing_listening_names_the_endpoint(spawn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    helper = spawn(port=port, args=())
    assert helper.status() == "3"
    assert "http://127.0.0.1:%d" % port in helper.stderr()


def trickle(sock):
    """A byte every 0.2 s: each recv is quick, the answer never ends."""
    try:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(300):
            sock.sendall(b" ")
            time.sleep(0.2)
    except OSError:
        pass


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize("answer", [None, trickle], ids=["silent", "trickling"])
def test_slow_server_cannot_stretch_the_deadline(fake, spawn, api, answer):
    # read_timeout 60 must not matter: a 3 s lock gives up within 3 s.
    server = fake(answer)
    started = time.monotonic()
    helper = spawn(port=server.port, api=api, lock_ttl=3, read_timeout=60, args=())
    assert helper.status(timeout=10) == "3"
    assert time.monotonic() - started < 3
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "did not answer within" in lines[0], lines


def test_an_address_without_a_socket_is_skipped(etcd34, monkeypatch):
    # A kernel without IPv6 (ipv6.disable=1) refuses the socket itself: the
    # next address must still be tried.
    import ctdb_etcd_lock
    real = socket.socket

    def no_ipv6(family=-1, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real(family, *args, **kwargs)
    monkeypatch.setattr(socket, "socket", no_ipv6)
    addresses = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", etcd34.port, 0, 0)),
                 (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", etcd34.port))]
    conn = ctdb_etcd_lock.Connection(ctdb_etcd_lock.Endpoint("http", "127.0.0.1", etcd34.port),
                                     addresses, time.monotonic() + 2, time.monotonic,
                                     ctdb_etcd_lock.Watch(1))
    request = ctdb_etcd_lock.Connection.encode("GET", "127.0.0.1", "/version", {}, None)
    status = conn.exchange(request, time.monotonic() + 2)[0]
    conn.close()
    assert status == 200
