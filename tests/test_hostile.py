"""Hostile and broken answers: HTML, cut-short and wrong-typed JSON, huge
headers and bodies, endless chunks, slow drips, nonsense, redirects
elsewhere, resets at every byte of a real answer, and a TLS handshake that
stalls.  A real etcd will not misbehave on purpose, so a fake does: a
FakeEtcd when the lock is taken, a Proxy before a real member while it is
held (fakeetcd.py).

When the lock is taken: status 3, one clear line naming the endpoint, no
traceback, a bounded time.  While it is held: the lock given up (stdout
closed, one 'lock lost' line) and the helper gone before the lock could
expire on etcd.  Always: a peak RSS under MEMORY_LIMIT, whatever the size
of the answer.  A '0' only ever while the real etcd holds our lock.
"""

import json
import os
import socket
import ssl
import threading
import time

import pytest

import ctdb_etcd_lock
from conftest import write_config
from etcdmember import wait_for
from fakeetcd import FakeEtcd, Proxy, body_of, path_of, read_message, reset

# KiB of peak RSS; the helper needs about 18 MiB, and parsing the longest
# answer it reads (Connection.MAX_ANSWER, sized from etcd's request limit) of
# the costliest JSON takes it to about 80 MiB.
MEMORY_LIMIT = 96 << 10
TTL, REFRESH = 2, 0.3  # the shortest lock there is: every fence comes quickly
MIB = 1 << 20


def answer(status, body, headers=()):
    head = ["HTTP/1.1 %s" % status, "Content-Length: %d" % len(body)] + list(headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def with_body(real, body):
    """A real answer of etcd's, its body replaced (Content-Length set anew)."""
    head = real.partition(b"\r\n\r\n")[0].split(b"\r\n")
    kept = [line for line in head[1:] if line.split(b":")[0].lower()
            not in (b"content-length", b"transfer-encoding")]
    return b"\r\n".join([head[0]] + kept + [b"Content-Length: %d" % len(body)]) \
        + b"\r\n\r\n" + body


def json_body(message):
    """The JSON of a real answer (a chunked one too, as etcd's keepalive)."""
    body = body_of(message)
    if b"chunked" in message.partition(b"\r\n\r\n")[0].lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return json.loads(body)


# ---------------------------------------------------------------------------
# What a broken server does with a request etcd answered with ``real``.
# Each: (sock, real) -> None, or False once it closed the connection.

def send(data):
    def fault(sock, real):
        sock.sendall(data)
    return fault


def cut_and_close(sock, real):
    """Half the real answer, then the end of the stream."""
    sock.sendall(real[:len(real) // 2])
    return False


def cut_and_reset(offset):
    def fault(sock, real):
        sock.sendall(real[:offset])
        reset(sock)
        return False
    return fault


def retyped(change):
    """The real answer with its JSON changed by change(data) -> data."""
    def fault(sock, real):
        sock.sendall(with_body(real, json.dumps(change(json_body(real))).encode()))
    return fault


def emptied_objects(data):
    """Every object inside the answer a list: "node": [], "header": [] ..."""
    return {key: [] if isinstance(value, dict) else value for key, value in data.items()}


def swapped_numbers(data):
    """Numbers as strings where etcd gives ints, and ints where it gives strings."""
    if isinstance(data, dict):
        return {key: swapped_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [swapped_numbers(value) for value in data]
    if isinstance(data, bool):
        return data
    if isinstance(data, int):
        return str(data)
    if isinstance(data, str) and data.isdigit():
        return int(data)
    return data


def only_header(data):
    """Every field gone but etcd's header."""
    return {key: value for key, value in data.items() if key == "header"}


def huge_header(sock, real):
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Filler: ")
    for _ in range(16):  # 16 MiB of one header line, never ended
        sock.sendall(b"a" * MIB)


def huge_body(sock, real):
    """Content-Length over what etcd ever sends, and all of it sent."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (16 * MIB))
    for _ in range(16):
        sock.sendall(b" " * MIB)


def endless_chunks(sock, real):
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 << 10, b" " * (64 << 10))
    for _ in range(1024):  # 64 MiB, if the helper read on that long
        sock.sendall(chunk)


def endless_header_lines(sock, real):
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(512):  # 16 MiB of short header lines
        sock.sendall(b"X-Filler: a\r\n" * 2048)


def drip(sock, real):
    """The real answer, one byte every 0.2 s."""
    for byte in range(len(real)):
        sock.sendall(real[byte:byte + 1])
        time.sleep(0.2)


def html(sock, real):
    sock.sendall(answer("200 OK", b"<html><body><h1>It works!</h1></body></html>",
                        ["Content-Type: text/html"]))


def redirect(trap):
    def fault(sock, real):
        sock.sendall(answer("307 Temporary Redirect", b"",
                            ["Location: %s/v3/lease/grant" % trap.url]))
    return fault


# ---------------------------------------------------------------------------
# Fixtures

@pytest.fixture
def servers():
    """servers(kind, ...) starts a FakeEtcd or Proxy, closed at the end."""
    started = []

    def start(kind, *args):
        started.append(kind(*args))
        return started[-1]
    yield start
    for server in started:
        server.close()


# Which real member, and which of its requests, a held fault hits.
TARGETS = {"v2": ("etcd34", "/v2/"), "v3": ("etcd35", "/v3/")}


def proxied_holder(etcd_members, servers, spawn, api, tls=None, **settings):
    """A helper holding the lock through a Proxy before a real member, with
    one refresh through; (proxy, helper, the member)."""
    flavour, _ = TARGETS[api]
    member = etcd_members(flavour)
    proxy = servers(Proxy, member.port, tls)
    helper = spawn(port=proxy.port, api=api, args=(), lock_ttl=TTL, refresh=REFRESH,
                   **settings)
    assert helper.status() == "0", helper.stderr()
    count = len(proxy.exchanges)
    wait_for(lambda: len(proxy.exchanges) > count + 1, 5, "a refresh")
    return proxy, helper, member


def vm_hwm(pid):
    """The peak RSS of a running process in KiB (0 once it is a zombie)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_to_exit(helper, timeout):
    """(exit time, peak RSS in KiB) of the helper.

    The exit is seen by a thread blocked in waitid (the process left for
    reaping), for a time close to the kernel's.  The peak is VmHWM, sampled
    until then: wait4's ru_maxrss would not do, it counts the copy of
    pytest that the fork made before the exec.  The peak of a broken answer
    comes while it is read, and the helper has more to do after that (a
    status, a line, a release): a sample every few milliseconds sees it."""
    pid = helper.proc.pid
    exited = []

    def see_exit():
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # still running at the timeout, then killed
            return
        exited.append(time.monotonic())
    threading.Thread(target=see_exit, daemon=True).start()
    deadline = time.monotonic() + timeout
    peak = 0
    while not exited:
        peak = max(peak, vm_hwm(pid))
        assert time.monotonic() < deadline, "helper still running after %ss; stderr: %s" % (
            timeout, helper.stderr())
        time.sleep(0.002)
    helper.proc.wait()
    return exited[0], peak


def assert_one_clean_line(helper, *words):
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines
    assert "Traceback" not in helper.stderr() and "internal error" not in lines[0], lines


# ---------------------------------------------------------------------------
# When the lock is taken: a fake answers every request the same broken way

def nonsense(api):
    return {"v2": b'{"action":"create","node":"yes"}', "v3": b'{"ID":{},"TTL":[]}'}[api]


ACQUIRE = {
    "html": send(answer("200 OK", b"<html><body>Welcome to nginx!</body></html>",
                        ["Content-Type: text/html"])),
    "html error page": send(answer("502 Bad Gateway", b"<html>Bad Gateway</html>",
                                   ["Content-Type: text/html"])),
    "json cut short": send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                           b'{"header":{"cluster_id":"1'),
    "200 with nonsense": send(answer("200 OK", b"OK")),
    "201 with a number": send(answer("201 Created", b"42")),
    "wrong-typed json": None,  # nonsense(api)
    "empty json object": send(answer("200 OK", b"{}")),
    # JSON numbers Python reads as infinity, where ids and TTLs go.
    "numbers past infinity": send(answer("200 OK", b'{"header": {"cluster_id": 1e400, '
                                         b'"member_id": -1e400}, "ID": 1e400, "TTL": 1e400, '
                                         b'"node": {"key": 1e400}}')),
    "huge header": huge_header,
    "huge body": huge_body,
    "endless chunks": endless_chunks,
    "endless header lines": endless_header_lines,
}


def fake_answer(case, api):
    fault = ACQUIRE[case] or send(answer("200 OK", nonsense(api)))
    return lambda sock: fault(sock, b"")


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize("case", sorted(ACQUIRE))
def test_broken_answer_when_taking_the_lock(servers, spawn, case, api):
    fake = servers(FakeEtcd, fake_answer(case, api))
    helper = spawn(port=fake.port, api=api, args=(), lock_ttl=TTL, read_timeout=60)
    assert helper.status(timeout=10) == "3", helper.stderr()
    _, peak = run_to_exit(helper, 5)
    assert_one_clean_line(helper, fake.url)
    assert peak < MEMORY_LIMIT, "peak RSS %d KiB" % peak


@pytest.mark.parametrize("empty", [b"[]", b"{}"], ids=["lists", "objects"])
def test_a_huge_answer_of_valid_json_stays_in_bounds(servers, spawn, empty):
    # The longest answer the helper reads, of the JSON that costs Python the
    # most memory per byte (empty lists or objects): parsing it must not be
    # what takes the helper past its bound.
    def flood(sock):
        items = (ctdb_etcd_lock.Connection.MAX_ANSWER - 2) // 3
        sock.sendall(answer("200 OK", b"[" + b",".join([empty] * items) + b"]"))
    fake = servers(FakeEtcd, flood)
    helper = spawn(port=fake.port, api="v3", args=(), lock_ttl=TTL)
    assert helper.status(timeout=10) == "3", helper.stderr()
    _, peak = run_to_exit(helper, 5)
    assert_one_clean_line(helper, fake.url)
    assert peak < MEMORY_LIMIT, "peak RSS %d KiB" % peak


def test_a_drip_cannot_stretch_the_deadline(servers, spawn, etcd_members):
    # A real grant answer of etcd's, one byte every 0.2 s: each recv is
    # quick, the answer never ends in time.
    member = etcd_members("etcd35")
    real = member.http("POST", "/v3/lease/grant", b'{"TTL": 5}')[1]
    real = answer("200 OK", real, ["Content-Type: application/json"])
    fake = servers(FakeEtcd, lambda sock: drip(sock, real))
    started = time.monotonic()
    helper = spawn(port=fake.port, api="v3", args=(), lock_ttl=TTL, read_timeout=60)
    assert helper.status(timeout=10) == "3", helper.stderr()
    exited, _ = run_to_exit(helper, 5)
    assert exited - started < TTL + 1  # safety bound: the lock's own life, and slack
    assert_one_clean_line(helper, fake.url, "did not answer within")


REDIRECTS = [("v2", "307 Temporary Redirect", "true"), ("v3", "307 Temporary Redirect", "true"),
             ("v2", "301 Moved Permanently", "true"), ("v3", "308 Permanent Redirect", "true"),
             ("v3", "302 Found", "false")]


@pytest.mark.parametrize("api,status,allow_redirect", REDIRECTS,
                         ids=["-".join(case[:2]).replace(" ", "-") + "-allow_redirect-" + case[2]
                              for case in REDIRECTS])
def test_a_redirect_elsewhere_is_never_followed(servers, spawn, api, status, allow_redirect):
    # python-etcd followed redirects when allow_redirect said so; the helper
    # accepts the setting and follows none: etcd redirects nothing it asks,
    # and a lock taken elsewhere would be a lock no other node sees.
    trap = servers(FakeEtcd, send(answer("200 OK", b"{}")))
    body = json.dumps({"node": {"key": "/_locks/_ctdb/x/1", "value": "v"}}).encode()
    fake = servers(FakeEtcd, send(answer(status, body, ["Location: %s/v2/keys/x" % trap.url,
                                                        "Content-Type: application/json"])))
    helper = spawn(port=fake.port, api=api, args=(), lock_ttl=TTL,
                   allow_redirect=allow_redirect)
    assert helper.status(timeout=10) == "3", helper.stderr()
    run_to_exit(helper, 5)
    assert_one_clean_line(helper, fake.url)
    assert trap.connections == 0


@pytest.mark.parametrize("where", ["status line", "headers", "last byte"])
def test_reset_in_a_real_answer_when_taking_the_lock(etcd_members, servers, spawn, where):
    # Every offset is swept in-process below; here the whole helper, as
    # ctdbd sees it, on a few.
    proxy = servers(Proxy, etcd_members("etcd35").port)
    offset = {"status line": lambda real: 9, "headers": lambda real: real.index(b"\r\n") + 20,
              "last byte": lambda real: len(real) - 1}[where]
    proxy.fault = lambda sock, request, real: cut_and_reset(offset(real))(sock, real)
    helper = spawn(port=proxy.port, api="v3", args=(), lock_ttl=TTL)
    assert helper.status(timeout=10) == "3", helper.stderr()
    run_to_exit(helper, 5)
    assert_one_clean_line(helper, proxy.url)


# ---------------------------------------------------------------------------
# While the lock is held: a proxy before a real member passes the lock's
# taking and a refresh, then breaks every answer for the API in TARGETS.

# (HTML, nonsense and resets at other offsets take the same ways as these,
# when the lock is taken above and in-process below.)
HELD = {
    "html": html,
    "json cut short": cut_and_close,
    "objects as lists": retyped(emptied_objects),
    "numbers swapped with strings": retyped(swapped_numbers),
    "fields missing": retyped(only_header),
    "huge header": huge_header,
    "endless chunks": endless_chunks,
    "slow drip": drip,
    "reset in the body": lambda sock, real: cut_and_reset(len(real) - 3)(sock, real),
}


def check_given_up_in_time(proxy, helper, member, api, key):
    """stdout closed and the helper gone before the lock could expire; or,
    should the broken answers still prove the lock (a harmless change),
    the lock really held on etcd."""
    try:
        # Past the fence and the backstop, a helper still running holds.
        exited, peak = run_to_exit(helper, TTL + 1)
    except AssertionError:
        # Still holding: only right if etcd says the lock is ours.
        assert member.value(api, key) is not None, helper.stderr()
        assert helper.eof(0) is False
        return "held"
    assert helper.eof(0)
    last = proxy.last_answered()
    assert exited < last + TTL, "exited %.2fs after the last refresh etcd saw" % (
        exited - last)
    assert_one_clean_line(helper, "lock lost")
    assert peak < MEMORY_LIMIT, "peak RSS %d KiB" % peak
    return "given up"


@pytest.mark.parametrize("api", sorted(TARGETS))
@pytest.mark.parametrize("case", sorted(HELD))
def test_broken_answer_while_holding(etcd_members, servers, spawn, key, case, api):
    proxy, helper, member = proxied_holder(etcd_members, servers, spawn, api)
    proxy.fault_if = lambda request: TARGETS[api][1] in path_of(request)
    fault = HELD[case]
    proxy.fault = lambda sock, request, real: fault(sock, real)
    # v2 compares the entry's modifiedIndex (a number, as etcd gives it), v3
    # the key's revision and lease (strings, as etcd gives them): numbers of
    # the other kind are no answer of etcd's.
    assert check_given_up_in_time(proxy, helper, member, api, key) == "given up"


def test_redirect_while_holding_is_not_followed(etcd_members, servers, spawn, key):
    trap = servers(FakeEtcd, send(answer("200 OK", b"{}")))
    proxy, helper, member = proxied_holder(etcd_members, servers, spawn, "v3")
    fault = redirect(trap)
    proxy.fault = lambda sock, request, real: fault(sock, real)
    assert check_given_up_in_time(proxy, helper, member, "v3", key) == "given up"
    assert trap.connections == 0


def test_tls_handshake_stalls_when_taking_the_lock(etcd_members, servers, spawn, certs):
    # (test_tls.py has more ways to stall; this one through the same proxy.)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server.cert, certs.server.key)
    proxy = servers(Proxy, etcd_members("etcd35").port, context)
    proxy.stall_handshakes = True
    helper = spawn(port=proxy.port, api="v3", args=(), lock_ttl=TTL, read_timeout=60,
                   protocol="https", ca_cert=certs.ca)
    assert helper.status(timeout=10) == "3", helper.stderr()
    _, peak = run_to_exit(helper, 5)
    assert_one_clean_line(helper, proxy.url, "did not answer within")
    assert peak < MEMORY_LIMIT, "peak RSS %d KiB" % peak


def test_tls_handshake_stalls_while_holding(etcd_members, servers, spawn, key, certs):
    # The kept-alive connection is reset; every new one stalls in its
    # handshake: the lock goes before it could expire.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server.cert, certs.server.key)
    proxy, helper, member = proxied_holder(etcd_members, servers, spawn, "v3", tls=context,
                                           protocol="https", ca_cert=certs.ca)
    proxy.stall_handshakes = True
    proxy.fault = lambda sock, request, real: cut_and_reset(0)(sock, real)
    assert check_given_up_in_time(proxy, helper, member, "v3", key) == "given up"


# ---------------------------------------------------------------------------
# A reset (or an end of stream) at every byte offset of real answers:
# recorded once from a real member of each flavour, then replayed to the
# helper's own code, in-process, cut at each offset in turn.

VALUE = "host=test pnn=0 pid=1 id=0123456789abcdef"


def lock_for(port, api, tmp_path):
    path = write_config(str(tmp_path / ("etcd-%s" % api)), {
        "port": port, "api": api, "lock_ttl": 5, "refresh": 1, "lock_name": "offsets"})
    config = ctdb_etcd_lock.read_config(path, True)
    log = ctdb_etcd_lock.Log(0)
    transport = ctdb_etcd_lock.Transport(config, log, ctdb_etcd_lock.Watch(1))
    return ctdb_etcd_lock.make_lock(config, transport, VALUE, log)


FLOWS = [("etcd34", "v2"), ("etcd34", "v3"), ("etcd35", "v3")]


@pytest.fixture(scope="module")
def recorded(etcd_members, tmp_path_factory):
    """(flavour, api) -> the exchanges of one acquire and one refresh, as a
    real member answered them, and how many belong to the acquire."""
    flows = {}
    for flavour, api in FLOWS:
        member = etcd_members(flavour)
        proxy = Proxy(member.port)
        try:
            lock = lock_for(proxy.port, api, tmp_path_factory.mktemp("record"))
            lock.acquire(time.monotonic() + 5)
            taking = len(proxy.exchanges)
            lock.refresh(time.monotonic() + 5)
            flows[flavour, api] = (list(proxy.exchanges), taking)
            lock.release(time.monotonic() + 5)
            lock.transport.close()
        finally:
            proxy.close()
    return flows


class Replay:
    """Answers each request with the recorded answer of its turn (a request
    sent again gets its answer again), cutting one answer once: ``cut`` =
    (turn, offset, reset or end of stream)."""

    def __init__(self, exchanges):
        self.exchanges = exchanges
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        self.start(None)
        threading.Thread(target=self._accept, daemon=True).start()

    def start(self, cut):
        self.cut, self.turn, self.whole = cut, 0, set()

    def _accept(self):
        while not self.stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        buffer = b""
        try:
            while True:
                request, buffer = read_message(sock, buffer)
                if request is None:
                    return
                turn = self.turn
                if turn > 0 and path_of(request) == self.exchanges[turn - 1].path \
                        and (turn == len(self.exchanges)
                             or path_of(request) != self.exchanges[turn].path):
                    turn -= 1  # sent again
                if turn >= len(self.exchanges) or \
                        path_of(request) != self.exchanges[turn].path:
                    sock.sendall(answer("500 Unexpected", b""))
                    return
                self.turn = turn + 1
                real = self.exchanges[turn].answer
                if self.cut is not None and self.cut[0] == turn:
                    _, offset, hard = self.cut
                    self.cut = None
                    sock.sendall(real[:offset])
                    if hard:
                        reset(sock)
                    return
                self.whole.add(turn)  # before the client can act on it
                sock.sendall(real)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.stopped = True
        self.listener.close()


@pytest.mark.parametrize("flavour,api", FLOWS, ids=["-".join(flow) for flow in FLOWS])
def test_cut_at_every_byte_of_real_answers(recorded, tmp_path, flavour, api):
    exchanges, taking = recorded[flavour, api]
    replay = Replay(exchanges)
    outcomes = {}
    try:
        lock = None
        for turn, exchange in enumerate(exchanges):
            for offset in range(len(exchange.answer)):
                # A reset at every offset; an end of stream at every tenth
                # (the same parser sees both, and time is short).
                for hard in (True, False) if offset % 10 == 0 else (True,):
                    replay.start((turn, offset, hard))
                    if lock is not None:
                        lock.transport.close()
                    lock = lock_for(replay.port, api, tmp_path)
                    outcome = cut_outcome(lock, replay, turn, taking, len(exchanges))
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        if lock is not None:
            lock.transport.close()
        replay.close()
    assert set(outcomes) <= {"refused", "sent again"}, outcomes
    assert outcomes.get("refused")


def cut_outcome(lock, replay, turn, taking, turns):
    """What the lock made of a cut answer: refused (TransportError), or
    taken/refreshed all the same because the request was sent again and
    answered whole.  Anything else fails the test."""
    deadline = time.monotonic() + 2
    try:
        lock.acquire(deadline)
        if turn >= taking:
            lock.refresh(deadline)
    except ctdb_etcd_lock.TransportError:
        return "refused"
    needed = range(taking) if turn < taking else range(turns)
    assert replay.whole >= set(needed), (
        "a cut answer taken as whole", turn, replay.whole)
    return "sent again"
