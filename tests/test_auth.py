"""Authentication: username and password, v2 (HTTP Basic on every request)
and v3 (a token from /v3/auth/authenticate, fetched again when it expires),
on real etcd members with auth enabled. The password never shows on stderr,
and a config file holding one that others may read earns a warning."""

import base64
import json
import os
import signal
import time

import pytest

from certs import (enable_v2_auth, enable_v3_auth, error_reason, mentions,
                   start_secure_etcd)
from conftest import held_apis, write_config
from etcdmember import wait_for

USER = "root"
PASSWORD = "s3cret-Pa55-7q"
WRONG = "wr0ng-Pa55-9z"
SECRETS = [PASSWORD, WRONG] + [base64.b64encode(text.encode()).decode()
                               for text in (PASSWORD, WRONG, USER + ":" + PASSWORD,
                                            USER + ":" + WRONG)]

# name -> (flavour, which auth, TLS, more etcd arguments)
MEMBERS = {
    "auth35": ("etcd35", ("v3",), False, ()),
    "auth34": ("etcd34", ("v3", "v2"), False, ()),
    # Simple tokens that expire after 1 s idle (the flag exists in 3.4 and 3.5).
    "ttl35": ("etcd35", ("v3",), False, ("--auth-token-ttl", "1")),
    "ttl34": ("etcd34", ("v3", "v2"), False, ("--auth-token-ttl", "1")),
    "authtls35": ("etcd35", ("v3",), True, ()),
}


@pytest.fixture(scope="module")
def auth_members(tmp_path_factory, certs):
    """auth_members(name) -> a SecureEtcd of MEMBERS with auth on for
    USER/PASSWORD (its own client authenticates), started on first use."""
    members = {}

    def get(name):
        if name not in members:
            flavour, auth, tls, extra = MEMBERS[name]
            member = start_secure_etcd(flavour, tmp_path_factory.mktemp(name), extra=extra,
                                       tls=certs.server if tls else None, ca=certs.ca)
            members[name] = member
            if "v3" in auth:
                enable_v3_auth(member, USER, PASSWORD)
            if "v2" in auth:
                enable_v2_auth(member, USER, PASSWORD)
        return members[name]
    yield get
    for member in members.values():
        member.stop()


@pytest.fixture
def spawn_auth(spawn, tmp_path, lock_name, certs):
    """spawn_auth(member, mode=0o600, args=(), **settings): the helper with a
    config file of that mode (else the password warning would be a second
    stderr line), talking to member as it is served (https trusting the test
    CA); a setting given as None is left out."""
    count = []

    def start(member=None, mode=0o600, args=(), **settings):
        values = {"lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name}
        if member is not None:
            values["port"] = member.port
            if member.tls:
                values.update(protocol="https", ca_cert=certs.ca)
        values.update(settings)
        count.append(1)
        path = str(tmp_path / ("auth-%d.conf" % len(count)))
        write_config(path, {k: v for k, v in values.items() if v is not None})
        os.chmod(path, mode)
        helper = spawn(config=path, args=args)
        helper.config = path
        return helper
    return start


def assert_no_secret(helper):
    text = helper.stderr()
    for secret in SECRETS:
        assert secret not in text, (secret, text)


# ---------------------------------------------------------------------------
# The fixtures are what they claim

def post(member, path, payload, headers=None):
    return member.raw("POST", path, json.dumps(payload).encode(), headers)


@pytest.mark.parametrize("name", ["auth35", "auth34", "ttl35"])
def test_fixture_auth_is_really_on(auth_members, name):
    member = auth_members(name)
    range_x = {"key": "eA=="}
    status, data = post(member, "/v3/kv/range", range_x)  # no token
    assert status in (400, 401) and b"user name is empty" in data, (status, data)
    status, data = post(member, "/v3/kv/range", range_x, {"Authorization": "nonsense"})
    assert status == 401 and json.loads(data)["code"] == 16, data
    status, data = post(member, "/v3/auth/authenticate", {"name": USER, "password": WRONG})
    assert status == 400 and b"authentication failed" in data, data
    assert member.v3("/kv/range", range_x)["header"]["revision"]  # with a token
    if name.endswith("34"):
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(
                (USER + ":" + WRONG).encode()).decode()}):
            status, data = member.raw("GET", "/v2/keys/", headers=headers)
            assert status == 401 and json.loads(data)["errorCode"] == 110, data
            status, data = member.raw("PUT", "/v2/keys/fixture-check", b"value=1", dict(
                headers, **{"Content-Type": "application/x-www-form-urlencoded"}))
            assert status == 401, data
        assert member.v2("PUT", "/fixture-check", value="1")[0] in (200, 201)  # as root


def new_token(member):
    """A token of our own (the member's client keeps its own in use)."""
    status, data = post(member, "/v3/auth/authenticate", {"name": USER, "password": PASSWORD})
    assert status == 200, data
    return json.loads(data)["token"]


# ---------------------------------------------------------------------------
# Right, wrong and missing credentials

CASES = [("auth35", "v3"), ("auth35", "auto"), ("auth34", "v3"), ("auth34", "auto"),
         ("auth34", "v2"), ("authtls35", "v3")]


@pytest.mark.parametrize("name,api", CASES, ids=["-".join(case) for case in CASES])
def test_right_credentials(auth_members, spawn_auth, key, name, api):
    member = auth_members(name)
    holder = spawn_auth(member, api=api, args=("-v",), username=USER, password=PASSWORD)
    assert holder.status() == "0", holder.stderr()
    where = held_apis(api, member)
    first = {w: member.value(w, key) for w in where}
    for value in first.values():
        assert value and "pid=%d" % holder.proc.pid in value, first
    time.sleep(1.6)  # a few refreshes
    assert holder.running(), holder.stderr()
    assert {w: member.value(w, key) for w in where} == first
    other = spawn_auth(member, api=api, username=USER, password=PASSWORD)
    assert other.status() == "1", other.stderr()
    assert other.wait() == 1
    assert holder.terminate() == 0
    for w in where:
        assert member.value(w, key) is None, w
    assert "Traceback" not in holder.stderr()
    assert_no_secret(holder)


WRONG_CASES = [("auth35", "v3"), ("auth34", "v3"), ("auth34", "v2"), ("auth34", "auto"),
               ("authtls35", "v3")]


@pytest.mark.parametrize("name,api", WRONG_CASES, ids=["-".join(case) for case in WRONG_CASES])
@pytest.mark.parametrize("given", ["wrong password", "no credentials"])
def test_refused_credentials(auth_members, spawn_auth, key, name, api, given):
    member = auth_members(name)
    credentials = {"username": USER, "password": WRONG} if given == "wrong password" else {}
    helper = spawn_auth(member, api=api, **credentials)
    reason = error_reason(helper, member.url)
    assert mentions(reason, "v2", "v3") if api == "auto" else mentions(reason, api), reason
    assert mentions(reason, "password", "credentials", "authentication"), reason
    assert_no_secret(helper)
    assert helper.wait() == 3
    for w in held_apis(api, member):
        assert member.value(w, key) is None, w


@pytest.mark.parametrize("name,api", [("auth35", "v3"), ("auth34", "auto")],
                         ids=["auth35-v3", "auth34-auto"])
@pytest.mark.parametrize("password", [PASSWORD, WRONG], ids=["right", "wrong"])
def test_password_never_on_stderr_even_with_vvv(auth_members, spawn_auth, name, api,
                                                password):
    member = auth_members(name)
    helper = spawn_auth(member, api=api, args=("-vvv",), username=USER, password=password)
    if password == PASSWORD:
        assert helper.status() == "0", helper.stderr()
        time.sleep(1.2)  # refreshes, logged with their bodies
        assert helper.terminate() == 0
    else:
        assert helper.status() == "3", helper.stderr()
        helper.wait()
    text = helper.stderr()
    assert len(text.splitlines()) > 3, text  # -vvv did log requests
    assert "auth/authenticate" in text, text  # including the one carrying the password
    assert_no_secret(helper)


def test_username_without_password_is_a_config_error(spawn_auth):
    helper = spawn_auth(username=USER)
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "config error" in lines[0] and "password" in lines[0], lines


def test_password_without_username_is_a_config_error(spawn_auth):
    helper = spawn_auth(password=PASSWORD)
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "config error" in lines[0] and "username" in lines[0], lines
    assert_no_secret(helper)


# ---------------------------------------------------------------------------
# An expired token: authenticate again, keep holding

@pytest.mark.parametrize("name,api", [("ttl35", "v3"), ("ttl34", "auto")],
                         ids=["ttl35-v3", "ttl34-auto"])
def test_expired_token_is_renewed(auth_members, spawn_auth, key, name, api):
    member = auth_members(name)
    old_token = new_token(member)  # left idle: expires 1 s from now
    holder = spawn_auth(member, api=api, args=("-vv",), lock_ttl=9, refresh=3,
                        username=USER, password=PASSWORD)
    assert holder.status() == "0", holder.stderr()
    started = time.monotonic()
    where = held_apis(api, member)
    first = {w: member.value(w, key) for w in where}
    for value in first.values():
        assert value and "pid=%d" % holder.proc.pid in value, first
    # Four refreshes, each after the token expired (1 s idle), and past lock_ttl.
    while time.monotonic() - started < 12.6:
        time.sleep(max(0.1, min(1.5, 12.6 - (time.monotonic() - started))))
        assert holder.running(), holder.stderr()
        assert {w: member.value(w, key) for w in where} == first
    status, data = post(member, "/v3/kv/range", {"key": "eA=="}, {"Authorization": old_token})
    assert status == 401, data  # tokens really did expire meanwhile
    # -vv logs every request: it authenticated again (at least) for each refresh.
    assert holder.stderr().count("auth/authenticate") >= 4, holder.stderr()
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.wait() == 0
    for w in where:
        assert member.value(w, key) is None, w
    assert "lock lost" not in holder.stderr() and "Traceback" not in holder.stderr()
    assert_no_secret(holder)


# ---------------------------------------------------------------------------
# A password in a file others may read

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o600, 0o400],
                         ids=lambda mode: "%04o" % mode)
def test_password_file_readable_by_others_warns(auth_members, spawn_auth, key, mode):
    member = auth_members("auth35")
    holder = spawn_auth(member, api="v3", mode=mode, username=USER, password=PASSWORD)
    assert holder.status() == "0", holder.stderr()  # taken either way
    assert holder.terminate() == 0
    assert member.v3_value(key) is None
    lines = holder.stderr_lines()
    if mode & 0o077:
        assert len(lines) == 1, lines
        assert mentions(lines[0], "password") and holder.config in lines[0], lines
    else:
        assert lines == [], lines
    assert_no_secret(holder)


# ---------------------------------------------------------------------------
# What a real etcd will not do on cue: refuse a new token with "no leader"
# just when the old one expired.  A fake v3 gateway, for this alone.

class BlippingGateway:
    """Tokens die after each keepalive; the second authenticate answers 503
    (no leader) once.  Just enough of the gateway to take and hold a lock.
    ``stale_closes``: a stale token is answered by closing the connection
    (as some servers do) instead of 401, and no authenticate fails."""

    HEADER = {"cluster_id": "4660", "member_id": "1", "revision": "10"}

    def __init__(self, stale_closes=False):
        import http.server
        import socketserver
        import threading
        state = {"authenticated": 0, "token": None, "kv": None, "closed": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, data):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                header, path = outer.HEADER, self.path
                if path == "/v3/auth/authenticate":
                    state["authenticated"] += 1
                    if state["authenticated"] == 2 and not stale_closes:
                        return self.answer(503, {"code": 14, "message": "etcdserver: no leader"})
                    state["token"] = "token-%d" % state["authenticated"]
                    return self.answer(200, {"header": header, "token": state["token"]})
                if self.headers.get("Authorization") != state["token"]:
                    if stale_closes:
                        state["closed"] += 1
                        self.close_connection = True
                        return None
                    return self.answer(401, {"code": 16,
                                             "message": "etcdserver: invalid auth token"})
                if path == "/v3/lease/grant":
                    return self.answer(200, {"header": header, "ID": "7", "TTL": "3"})
                if path == "/v3/kv/txn" and "request_put" in json.dumps(request):
                    put = request["success"][0]["request_put"]
                    state["kv"] = {"key": put["key"], "value": put["value"], "lease": "7",
                                   "create_revision": "10"}
                    return self.answer(200, {"header": header, "succeeded": True})
                if path == "/v3/lease/keepalive":
                    state["token"] = None  # expired, from now on
                    return self.answer(200, {"result": {"header": header, "ID": "7",
                                                        "TTL": "3"}})
                if path == "/v3/kv/range":
                    return self.answer(200, {"header": header, "kvs": [state["kv"]]})
                return self.answer(200, {"header": header, "succeeded": True})

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.state = state

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_no_leader_while_getting_a_new_token_is_retried(spawn_auth):
    gateway = BlippingGateway()
    try:
        holder = spawn_auth(port=gateway.port, api="v3", args=("-v",), username="root",
                            password=PASSWORD)
        assert holder.status() == "0", holder.stderr()
        deadline = time.monotonic() + 2.5  # refreshes of a 3 s lock, each with a new token
        while time.monotonic() < deadline:
            assert holder.running(), holder.stderr()
            time.sleep(0.1)
        assert gateway.state["authenticated"] >= 3, gateway.state
        assert "lock lost" not in holder.stderr(), holder.stderr()
        assert holder.terminate() == 0
    finally:
        gateway.close()


def test_stale_token_answered_by_a_closed_connection_means_a_new_token(spawn_auth):
    gateway = BlippingGateway(stale_closes=True)
    try:
        holder = spawn_auth(port=gateway.port, api="v3", args=("-v",), username="root",
                            password=PASSWORD)
        assert holder.status() == "0", holder.stderr()
        deadline = time.monotonic() + 4  # past the TTL (3 s), each refresh on a new token
        while time.monotonic() < deadline:
            assert holder.running(), holder.stderr()
            time.sleep(0.1)
        assert gateway.state["closed"] >= 3, gateway.state
        assert gateway.state["authenticated"] >= 4, gateway.state
        assert "lock lost" not in holder.stderr(), holder.stderr()
        assert holder.terminate() == 0
    finally:
        gateway.close()


# ---------------------------------------------------------------------------
# --check with credentials

@pytest.mark.parametrize("name", ["auth34", "authtls35"])
def test_check_judges_the_credentials(auth_members, spawn_auth, name):
    member = auth_members(name)
    good = spawn_auth(member, args=("--check", "-vvv"), username=USER, password=PASSWORD)
    assert good.wait() == 0, good.proc.stdout.read()
    out = good.proc.stdout.read().decode()
    assert "auth     ok" in out and "v3 served" in out, out
    assert ("TLS verified" in out) == bool(member.tls)
    bad = spawn_auth(member, args=("--check", "-vvv"), username=USER, password=WRONG)
    assert bad.wait() == 3
    said = bad.proc.stdout.read().decode()
    assert "auth     error" in said, said
    for helper, text in ((good, out), (bad, said)):
        assert_no_secret(helper)
        assert not any(secret in text for secret in SECRETS)


def test_check_a_user_who_may_not_write_the_lock(tmp_path, spawn_auth, lock_name):
    """Credentials that log in but may not touch the lock's key: the helper
    says '3', and --check must say so too."""
    (tmp_path / "member").mkdir()
    member = start_secure_etcd("etcd35", tmp_path / "member")
    try:
        enable_v3_auth(member, USER, PASSWORD)
        member.v3("/auth/role/add", {"name": "elsewhere"})
        member.v3("/auth/role/grant", {"name": "elsewhere", "perm": {
            "permType": "READWRITE", "key": base64.b64encode(b"/other/").decode(),
            "range_end": base64.b64encode(b"/other0").decode()}})
        member.v3("/auth/user/add", {"name": "ctdb", "password": WRONG})
        member.v3("/auth/user/grant", {"user": "ctdb", "role": "elsewhere"})
        helper = spawn_auth(member, api="v3", username="ctdb", password=WRONG)
        assert helper.status() == "3"
        check = spawn_auth(member, args=("--check",), api="v3", username="ctdb",
                           password=WRONG)
        assert check.wait() == 3
        out = check.proc.stdout.read().decode()
        assert "auth     error" in out and "permission denied" in out, out
    finally:
        member.stop()


# ---------------------------------------------------------------------------
# Credentials refused while holding: not a word from etcd that the lock is
# gone, so retried until the fence, as any failed refresh

def test_credentials_refused_for_a_while_keep_the_lock(tmp_path, spawn_auth, key):
    (tmp_path / "member").mkdir()
    member = start_secure_etcd("etcd34", tmp_path / "member")
    try:
        enable_v2_auth(member, USER, PASSWORD)

        def set_password(password):
            status, data = member.http("PUT", "/v2/auth/users/" + USER, json.dumps(
                {"user": USER, "password": password}).encode(),
                {"Content-Type": "application/json"})
            assert status == 200, (status, data)
            member.v2_auth = (USER, password)

        holder = spawn_auth(member, api="v2", args=("-v",), lock_ttl=6, refresh=0.5,
                            username=USER, password=PASSWORD)
        assert holder.status() == "0", holder.stderr()
        value = member.v2_value(key)
        set_password(WRONG)
        try:
            wait_for(lambda: holder.stderr().count("refresh failed") >= 2 or
                     not holder.running(), 4, "two refreshes refused")
        finally:
            set_password(PASSWORD)
        wait_for(lambda: "refresh works again" in holder.stderr() or not holder.running(),
                 4, "a refresh to work again")
        assert holder.running(), holder.stderr()
        assert "lock lost" not in holder.stderr(), holder.stderr()
        assert "refused us" in holder.stderr()
        assert member.v2_value(key) == value
        assert holder.terminate() == 0
        assert member.v2_value(key) is None
        assert_no_secret(holder)
    finally:
        member.stop()
