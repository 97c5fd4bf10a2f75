"""TLS: the helper talks https to etcd, verifying the server against ca_cert
(and its name), presenting a client certificate when given one; every TLS
failure is status 3 and one line naming the endpoint and the reason, within
the lock's life."""

import signal
import socket
import ssl
import threading
import time
import urllib.error

import pytest

from certs import client_context, error_reason, mentions, start_secure_etcd
from conftest import held_apis
from etcdmember import wait_for

# name -> (flavour, how it serves): certs attribute of the server certificate,
# whether it wants client certificates.
MEMBERS = {
    "tls34": ("etcd34", "server", False),
    "tls35": ("etcd35", "server", False),
    "mtls34": ("etcd34", "server", True),
    "mtls35": ("etcd35", "server", True),
    "mismatch35": ("etcd35", "mismatch", False),
    "expired35": ("etcd35", "expired", False),
}


@pytest.fixture(scope="module")
def tls_members(tmp_path_factory, certs):
    """tls_members(name) -> a SecureEtcd of MEMBERS, started on first use."""
    members = {}

    def get(name):
        if name not in members:
            flavour, served, wants_client = MEMBERS[name]
            good = served == "server"
            members[name] = start_secure_etcd(
                flavour, tmp_path_factory.mktemp(name), tls=getattr(certs, served),
                # Our own client cannot verify what is meant to fail.
                ca=certs.ca if good else None,
                client_ca=certs.ca if wants_client else None,
                client=certs.client if wants_client else None)
        return members[name]
    yield get
    for member in members.values():
        member.stop()


def https(certs, **settings):
    """The settings for a helper talking https to member, trusting the test CA."""
    values = {"protocol": "https", "ca_cert": certs.ca}
    values.update(settings)
    return values


# ---------------------------------------------------------------------------
# The fixtures are what they claim (these pass whatever the helper does)

def test_fixture_members_serve_https_verified_by_the_test_ca(tls_members, certs):
    for name in ("tls34", "tls35"):
        member = tls_members(name)
        assert member.url.startswith("https://127.0.0.1:")
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, member.port), timeout=5) as raw:
                with client_context(certs.ca).wrap_socket(raw, server_hostname=host) as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert member.http("GET", "/health")[0] == 200
        assert member.v3("/kv/range", {"key": "eA=="})["header"]["cluster_id"]
        if member.serves_v2:
            assert member.v2("PUT", "/fixture-check", value="1")[0] in (200, 201)
        for ca in (certs.other_ca, None):  # an unrelated CA, the system's
            with pytest.raises(urllib.error.URLError, match="local issuer"):
                member.raw("GET", "/version", context=client_context(ca))


def test_fixture_bad_certificates_fail_verification(tls_members, certs):
    cases = {"mismatch35": "IP address mismatch", "expired35": "certificate has expired"}
    for name, reason in cases.items():
        member = tls_members(name)
        assert member.http("GET", "/version")[0] == 200  # it serves; unverified
        with pytest.raises(urllib.error.URLError, match=reason):
            member.raw("GET", "/version", context=client_context(certs.ca))


@pytest.mark.parametrize("name", ["mtls34", "mtls35"])
def test_fixture_client_certificate_required(tls_members, certs, name):
    member = tls_members(name)
    assert member.v3("/kv/range", {"key": "eA=="})["header"]["cluster_id"]
    if member.serves_v2:
        assert member.v2("PUT", "/fixture-check", value="1")[0] in (200, 201)
    with pytest.raises(OSError, match="(?i)certificate"):  # an alert, whichever
        member.raw("GET", "/version", context=client_context(certs.ca))


# ---------------------------------------------------------------------------
# Taking and holding the lock over TLS

CASES = [("etcd34", "v2"), ("etcd34", "v3"), ("etcd34", "auto"),
         ("etcd35", "v3"), ("etcd35", "auto")]


@pytest.mark.parametrize("flavour,api", CASES, ids=["-".join(case) for case in CASES])
def test_holds_over_tls_past_the_ttl(tls_members, certs, spawn, key, flavour, api):
    member = tls_members("tls" + flavour[-2:])
    holder = spawn(member, api=api, lock_ttl=3, refresh=0.5, **https(certs))
    assert holder.status() == "0", holder.stderr()
    where = held_apis(api, member)
    first = {w: member.value(w, key) for w in where}
    for value in first.values():
        assert value and "pid=%d" % holder.proc.pid in value, first
    end = time.monotonic() + 6.2  # past twice the TTL
    while time.monotonic() < end:
        time.sleep(0.5)
        assert holder.running(), holder.stderr()
        assert {w: member.value(w, key) for w in where} == first
    other = spawn(member, api=api, args=(), **https(certs))
    assert other.status() == "1", other.stderr()
    assert other.wait() == 1
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.wait() == 0
    assert holder.rest_of_stdout() == b""
    for w in where:
        assert member.value(w, key) is None, w
    assert "Traceback" not in holder.stderr()


@pytest.mark.parametrize("flavour", ["etcd34", "etcd35"])
def test_endpoints_url(tls_members, certs, spawn, key, flavour):
    member = tls_members("tls" + flavour[-2:])
    holder = spawn(None, args=(), endpoints="https://127.0.0.1:%d" % member.port,
                   ca_cert=certs.ca)
    assert holder.status() == "0", holder.stderr()
    for w in held_apis("auto", member):
        assert "pid=%d" % holder.proc.pid in member.value(w, key)
    assert holder.terminate() == 0
    for w in held_apis("auto", member):
        assert member.value(w, key) is None
    assert holder.stderr() == ""


def test_host_name_is_verified_against_the_certificate(tls_members, certs, spawn, key):
    member = tls_members("tls35")
    holder = spawn(member, args=(), host="localhost", **https(certs))
    assert holder.status() == "0", holder.stderr()
    assert holder.terminate() == 0
    assert member.v3_value(key) is None
    assert holder.stderr() == ""


CLIENT_CERT_FORMS = {
    "combined PEM": lambda c: {"cert": c.client.combined},
    "tuple": lambda c: {"cert": "('%s', '%s')" % (c.client.cert, c.client.key)},
    "cert and key": lambda c: {"cert": c.client.cert, "key": c.client.key},
}


@pytest.mark.parametrize("form", sorted(CLIENT_CERT_FORMS))
def test_client_certificate(tls_members, certs, spawn, key, form):
    member = tls_members("mtls34")
    holder = spawn(member, api="auto", args=(),
                   **https(certs, **CLIENT_CERT_FORMS[form](certs)))
    assert holder.status() == "0", holder.stderr()
    for w in ("v2", "v3"):
        assert "pid=%d" % holder.proc.pid in member.value(w, key)
    assert holder.terminate() == 0
    for w in ("v2", "v3"):
        assert member.value(w, key) is None
    assert holder.stderr() == ""


# The key, in each form, in a file others may read: the same warning as for
# a password (the helper once on stderr, --check as a warning row).
READABLE_KEY_FORMS = {
    "combined PEM": lambda c, key: {"cert": key},
    "tuple": lambda c, key: {"cert": "('%s', '%s')" % (c.client.cert, key)},
    "cert and key": lambda c, key: {"cert": c.client.cert, "key": key},
}


@pytest.mark.parametrize("form", sorted(READABLE_KEY_FORMS))
def test_key_file_readable_by_others_warns(tls_members, certs, spawn, key, form, tmp_path):
    member = tls_members("mtls34")
    source = certs.client.combined if form == "combined PEM" else certs.client.key
    readable = tmp_path / "client-key.pem"
    readable.write_bytes(open(source, "rb").read())
    readable.chmod(0o644)
    settings = https(certs, **READABLE_KEY_FORMS[form](certs, str(readable)))
    holder = spawn(member, api="v3", args=(), **settings)
    assert holder.status() == "0", holder.stderr()
    assert holder.terminate() == 0
    lines = holder.stderr_lines()
    assert len(lines) == 1, lines
    assert str(readable) in lines[0] and "chmod 600" in lines[0], lines
    check = spawn(member, api="v3", args=("--check",), **settings)
    assert check.wait() == 0
    rows = [row for row in check.proc.stdout.read().decode().splitlines()
            if row.split()[:2] == ["config", "warning"]]
    assert len(rows) == 1 and str(readable) in rows[0], rows


# ---------------------------------------------------------------------------
# Failures: status 3, one line naming the endpoint and the reason, quickly

def failed(helper, url, started):
    reason = error_reason(helper, url)
    assert time.monotonic() - started < 3, "took longer than lock_ttl: " + reason
    return reason


def spawn_timed(spawn, *args, **settings):
    started = time.monotonic()
    return spawn(*args, lock_ttl=3, args=(), **settings), started


@pytest.mark.parametrize("api", ["v2", "v3", "auto"])
def test_unrelated_ca(tls_members, certs, spawn, key, api):
    member = tls_members("tls34")
    helper, started = spawn_timed(spawn, member, api=api,
                                  **https(certs, ca_cert=certs.other_ca))
    reason = failed(helper, member.url, started)
    assert mentions(reason, "certificate") and mentions(reason, "verif", "unknown", r"\bCA\b"), reason
    assert member.v3_value(key) is None and member.v2_value(key) is None


def test_no_ca_cert_means_the_system_store(tls_members, certs, spawn):
    member = tls_members("tls35")
    helper, started = spawn_timed(spawn, member, **https(certs, ca_cert=None))
    reason = failed(helper, member.url, started)
    assert mentions(reason, "certificate") and mentions(reason, "verif", "unknown", r"\bCA\b"), reason


def test_name_mismatch(tls_members, certs, spawn):
    member = tls_members("mismatch35")
    helper, started = spawn_timed(spawn, member, **https(certs))
    reason = failed(helper, member.url, started)
    assert mentions(reason, "match", "name"), reason


def test_expired_server_certificate(tls_members, certs, spawn):
    member = tls_members("expired35")
    helper, started = spawn_timed(spawn, member, **https(certs))
    reason = failed(helper, member.url, started)
    assert mentions(reason, "expired"), reason


# Go's TLS server says so with a different alert in etcd 3.4 (bad certificate)
# and 3.5 (certificate required).
@pytest.mark.parametrize("flavour", ["etcd34", "etcd35"])
def test_client_certificate_required_but_none_given(tls_members, certs, spawn, key, flavour):
    member = tls_members("mtls" + flavour[-2:])
    helper, started = spawn_timed(spawn, member, **https(certs))
    reason = failed(helper, member.url, started)
    assert mentions(reason, "client cert"), reason
    for w in held_apis("auto", member):
        assert member.value(w, key) is None, w


def test_plain_http_to_a_tls_port(tls_members, spawn):
    member = tls_members("tls35")
    helper, started = spawn_timed(spawn, member)  # protocol http, the default
    reason = failed(helper, "http://127.0.0.1:%d" % member.port, started)
    assert mentions(reason, "TLS", "https"), reason


def test_tls_to_a_plain_port(etcd_members, certs, spawn):
    plain = etcd_members("etcd35")
    helper, started = spawn_timed(spawn, plain, protocol="https", ca_cert=certs.ca)
    reason = failed(helper, "https://127.0.0.1:%d" % plain.port, started)
    assert mentions(reason, "TLS", "http"), reason


def test_missing_ca_cert_file(tls_members, certs, spawn, tmp_path):
    member = tls_members("tls35")
    missing = str(tmp_path / "no-such-ca.pem")
    helper = spawn(member, args=(), **https(certs, ca_cert=missing))
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1 and missing in lines[0], lines


# ---------------------------------------------------------------------------
# A server that stalls or trickles, during or after the handshake

class FakeTlsServer:
    """Accepts TCP on loopback; then, per connection:

    stall-handshake     reads the ClientHello and says nothing
    trickle-handshake   answers it with the real server flight, a byte every 0.2 s
    silent-after        completes the handshake, reads the request, says nothing
    trickle-after       completes the handshake, then an HTTP answer that never ends
    """

    def __init__(self, behaviour, pair):
        self.behaviour = behaviour
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pair.cert, pair.key)
        self.stopped = threading.Event()
        self.connections = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = "https://127.0.0.1:%d" % self.port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _trickle(self, conn, data):
        for i in range(len(data)):
            if self.stopped.wait(0.2):
                return
            conn.sendall(data[i:i + 1])

    def _serve(self, conn):
        try:
            getattr(self, "_" + self.behaviour.replace("-", "_"))(conn)
        except (OSError, ssl.SSLError):
            pass
        self.stopped.wait(30)

    def _stall_handshake(self, conn):
        conn.recv(65536)

    def _trickle_handshake(self, conn):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            incoming.write(data)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            flight = outgoing.read()
            if flight:
                self._trickle(conn, flight)
                return

    def _handshake(self, conn):
        tls = self.context.wrap_socket(conn, server_side=True)
        self.connections.append(tls)
        tls.recv(65536)
        return tls

    def _silent_after(self, conn):
        self._handshake(conn)

    def _trickle_after(self, conn):
        tls = self._handshake(conn)
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n")
        self._trickle(tls, b" " * 1000)

    def close(self):
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def fake_tls(certs):
    servers = []

    def start(behaviour):
        servers.append(FakeTlsServer(behaviour, certs.server))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def test_fixture_fake_tls_server(fake_tls, certs):
    """The fakes do what they say: the handshake never ends (stall, trickle),
    or it ends and the answer never does."""
    for behaviour in ("stall-handshake", "trickle-handshake"):
        server = fake_tls(behaviour)
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.6) as raw:
            with pytest.raises(socket.timeout):
                client_context(certs.ca).wrap_socket(raw, server_hostname="127.0.0.1")
    for behaviour in ("silent-after", "trickle-after"):
        server = fake_tls(behaviour)
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.6) as raw:
            with client_context(certs.ca).wrap_socket(raw,
                                                      server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                got, end = b"", time.monotonic() + 0.8
                try:
                    while time.monotonic() < end:
                        got += tls.recv(100)
                except socket.timeout:
                    pass
        if behaviour == "silent-after":
            assert got == b""
        else:
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and 0 < len(body) < 20, got


SLOW = [("stall-handshake", "v3"), ("trickle-handshake", "v3"), ("silent-after", "v3"),
        ("trickle-after", "v3"), ("trickle-after", "v2")]


@pytest.mark.parametrize("behaviour,api", SLOW, ids=["-".join(case) for case in SLOW])
def test_slow_tls_server_cannot_stretch_the_deadline(fake_tls, certs, spawn, behaviour, api):
    server = fake_tls(behaviour)
    started = time.monotonic()
    helper = spawn(None, port=server.port, api=api, lock_ttl=3, read_timeout=60, args=(),
                   protocol="https", ca_cert=certs.ca)
    assert helper.status(timeout=10) == "3", helper.stderr()
    assert time.monotonic() - started < 3, helper.stderr()
    error_reason(helper, server.url)
    wait_for(lambda: not helper.running(), 3, "the helper to exit")
