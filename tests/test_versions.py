"""The etcd releases people install now, built from Go modules
(etcdmember.NEWER_FLAVOURS: the newest 3.5, 3.6 and 3.7), each through the
cheap behaviours: take, contend, give back, a lease revoked, the handover,
a member killed in a 3-member cluster, TLS with a client certificate, a
refused password.  The suite's parametrized tests run on Debian's 3.4 and
3.5 (MAIN_FLAVOURS); the expensive ones (hostile answers, properties,
partitions, real ctdbd) stay there.

And on every release, Debian's too, a user who may read and write the
lock's prefix and nothing else: takes the lock and keeps it while an admin
changes users and roles (each change makes a JWT token old: "revision of
auth store is old" means authenticate again, not "lock lost"), and gets
answers from --check and --status, also where etcd (3.6.0-3.6.11: etcd368)
keeps maintenance status to root, and in a 3-member cluster, whose members
etcd 3.5.28 and later name only to a user with a token."""

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from certs import add_lock_user, enable_v3_auth, jwt_arguments, start_secure_etcd
from conftest import HELPER, helper_env, write_config
from etcdmember import MAIN_FLAVOURS, NEWER_FLAVOURS, start_cluster, start_etcd, wait_for

ALL = MAIN_FLAVOURS + NEWER_FLAVOURS
SETTINGS = {"lock_ttl": 3, "refresh": 0.5}
ROOT, ROOT_PASSWORD = "root", "r00t-Pa55-4x"
USER, PASSWORD = "ctdb", "ctdb-Pa55-8w"
# The CVE-2026-33413 fix: a lease wants a token when auth is on.
LEASE_WANTS_TOKEN = {"etcd34": False, "etcd35": False, "etcd368": False,
                     "etcd35new": True, "etcd36": True, "etcd37": True}


def contention(helper):
    assert helper.status() == "1", helper.stderr()
    assert helper.wait() == 1


# ---------------------------------------------------------------------------
# The cheap behaviours on the newer releases

@pytest.fixture(params=NEWER_FLAVOURS)
def newer(request, etcd_members):
    """The shared member of each newer release in turn."""
    return etcd_members(request.param)


@pytest.mark.parametrize("api", ["v3", "auto"])
def test_take_contend_give_back(newer, spawn, key, api):
    holder = spawn(newer, api=api, args=(), **SETTINGS)
    assert holder.status() == "0", holder.stderr()
    kv = newer.v3_kv(key)
    assert "pid=%d" % holder.proc.pid in newer.v3_value(key)
    lease = newer.v3("/lease/timetolive", {"ID": kv["lease"]})
    assert lease["grantedTTL"] == "3", lease
    contention(spawn(newer, api=api, **SETTINGS))
    assert holder.terminate() == 0
    assert newer.v3_kv(key) is None
    assert kv["lease"] not in newer.leases()  # revoked, not left to expire
    assert holder.stderr() == ""
    nxt = spawn(newer, api=api, **SETTINGS)
    assert nxt.status() == "0", nxt.stderr()
    assert nxt.terminate() == 0


def test_lease_revoked_is_lock_lost(newer, spawn, key):
    # The keepalive of a revoked lease answers 200 without a TTL (3.6 leaves
    # zero values out of every answer).
    holder = spawn(newer, api="v3", **SETTINGS)
    assert holder.status() == "0", holder.stderr()
    newer.v3("/lease/revoke", {"ID": newer.v3_kv(key)["lease"]})
    assert holder.eof(3), holder.stderr()
    assert holder.wait() == 1, holder.stderr()
    assert "lock lost" in holder.stderr() and "expired or was revoked" in holder.stderr()


def test_dead_holder_is_taken_at_expiry(newer, spawn, key):
    holder = spawn(newer, api="v3", **SETTINGS)
    assert holder.status() == "0", holder.stderr()
    holder.proc.kill()
    holder.wait()
    wait_for(lambda: int(newer.v3("/lease/timetolive", {"ID": newer.v3_kv(key)["lease"]})
                         ["TTL"]) <= 1, 5, "the dead holder's lease to run down to 1 s")
    other = spawn(newer, api="v3", args=("-v",), handover_wait=3, **SETTINGS)
    asked = time.monotonic()
    assert other.status(timeout=10) == "0", other.stderr()
    assert time.monotonic() - asked < 3, other.stderr()
    assert "its lock expired" in other.stderr(), other.stderr()
    assert "pid=%d" % other.proc.pid in newer.v3_value(key)
    assert other.terminate() == 0


@pytest.mark.parametrize("flavour", NEWER_FLAVOURS)
def test_member_killed_while_holding(tmp_path, spawn, key, flavour):
    cluster = start_cluster(flavour, str(tmp_path / "cluster"))
    try:
        first = cluster.followers()[0]  # the member the holder talks to
        order = [first] + [m for m in cluster.members if m is not first]
        holder = spawn(None, api="v3", host=cluster.hosts(order), **SETTINGS)
        assert holder.status() == "0", holder.stderr()
        value = cluster.v3_value(key)
        first.kill()
        contender = spawn(None, api="v3", host=cluster.hosts(), **SETTINGS)
        end = time.monotonic() + 1.5 * SETTINGS["lock_ttl"]
        while time.monotonic() < end:
            assert holder.running(), holder.stderr()
            assert cluster.v3_value(key) == value
            time.sleep(0.25)
        contention(contender)
        assert holder.terminate() == 0
        assert "lock lost" not in holder.stderr(), holder.stderr()
        assert cluster.v3_value(key) is None
    finally:
        cluster.stop()


@pytest.mark.parametrize("flavour", NEWER_FLAVOURS)
def test_tls_with_a_client_certificate(tmp_path, certs, spawn, key, flavour):
    member = start_secure_etcd(flavour, tmp_path, tls=certs.server, client_ca=certs.ca,
                               ca=certs.ca, client=certs.client)
    try:
        tls = {"protocol": "https", "ca_cert": certs.ca, "cert": certs.client.cert,
               "key": certs.client.key}
        holder = spawn(member, api="auto", args=(), **dict(SETTINGS, **tls))
        assert holder.status() == "0", holder.stderr()
        value = member.v3_value(key)
        assert "pid=%d" % holder.proc.pid in value
        end = time.monotonic() + SETTINGS["lock_ttl"] + 0.5  # past the TTL
        while time.monotonic() < end:
            time.sleep(0.25)
            assert holder.running(), holder.stderr()
        assert member.v3_value(key) == value
        contention(spawn(member, api="auto", **dict(SETTINGS, **tls)))
        assert holder.terminate() == 0
        assert member.v3_value(key) is None
        assert holder.stderr() == ""
    finally:
        member.stop()


# ---------------------------------------------------------------------------
# A user with read-write on the lock's prefix only, on every release

@pytest.fixture(scope="module")
def auth_members(tmp_path_factory, certs):
    """auth_members(flavour) -> a member with JWT tokens and auth on: ROOT,
    and USER who may read and write /_locks/_ctdb/ only."""
    members = {}

    def get(flavour):
        if flavour not in members:
            member = start_secure_etcd(flavour, tmp_path_factory.mktemp("auth-" + flavour),
                                       extra=jwt_arguments(certs))
            members[flavour] = member
            add_lock_user(member, USER, PASSWORD)
            enable_v3_auth(member, ROOT, ROOT_PASSWORD)
        return members[flavour]
    yield get
    for member in members.values():
        member.stop()


def user_config(path, member, lock_name, **settings):
    """A config file for USER (mode 0600: no warning about the password)."""
    values = dict(SETTINGS, lock_name=lock_name, api="v3", username=USER, password=PASSWORD)
    if member is not None:
        values["port"] = member.port
    values.update(settings)
    write_config(path, values)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def spawn_user(spawn, tmp_path, lock_name):
    """spawn_user(member, args=(), **settings): the helper as USER."""
    made = []

    def start(member, args=(), **settings):
        made.append(1)
        path = str(tmp_path / ("user-%d.conf" % len(made)))
        return spawn(args=args, config=user_config(path, member, lock_name, **settings))
    return start


@pytest.fixture
def admin(tmp_path, stubs, lock_name):
    """admin(member, *args): --check or --status as USER -> (exit code,
    stdout, stderr)."""
    def run(member, *args):
        path = user_config(str(tmp_path / "admin.conf"), member, lock_name)
        done = subprocess.run([sys.executable, HELPER] + list(args) + ["-c", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60,
                              env=helper_env(stubs, tmp_path))
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    return run


@pytest.mark.parametrize("flavour", ALL + ["etcd368"])
def test_fixture_user_may_only_touch_the_lock_prefix(auth_members, flavour):
    member = auth_members(flavour)
    status, data = member.raw("POST", "/v3/auth/authenticate", json.dumps(
        {"name": USER, "password": PASSWORD}).encode())
    token = {"Authorization": json.loads(data)["token"]}
    inside, outside = (json.dumps({"key": member_b64(k), "value": "eA=="}).encode()
                       for k in ("/_locks/_ctdb/x", "/elsewhere"))
    assert member.raw("POST", "/v3/kv/put", inside, token)[0] == 200
    status, data = member.raw("POST", "/v3/kv/put", outside, token)
    assert status == 403 and b"permission denied" in data, (status, data)
    status, data = member.raw("POST", "/v3/lease/grant", b'{"TTL": 5}')  # no token
    assert (status != 200) == LEASE_WANTS_TOKEN[flavour], (status, data)


def member_b64(text):
    return base64.b64encode(text.encode()).decode()


def change_users_and_roles(member, rounds):
    """What an admin does: each change bumps etcd's auth revision."""
    for i in range(rounds):
        name = "other-%d-%d" % (i, int(time.monotonic() * 1000))
        member.v3("/auth/user/add", {"name": name, "password": "x-Pa55-%d" % i})
        member.v3("/auth/role/add", {"name": name})
        member.v3("/auth/role/grant", {"name": name, "perm": {
            "permType": "READ", "key": member_b64("/" + name)}})
        member.v3("/auth/user/grant", {"user": name, "role": name})
        yield


@pytest.mark.parametrize("flavour", ALL)
def test_user_keeps_the_lock_while_users_and_roles_change(auth_members, spawn_user, key,
                                                          flavour):
    member = auth_members(flavour)
    holder = spawn_user(member, args=("-v",))
    assert holder.status() == "0", holder.stderr()
    value = member.v3_value(key)
    assert "pid=%d" % holder.proc.pid in value
    end = time.monotonic() + SETTINGS["lock_ttl"] + 1  # past the TTL
    for _ in change_users_and_roles(member, 100):
        assert holder.running(), holder.stderr()
        assert member.v3_value(key) == value
        if time.monotonic() > end:
            break
        time.sleep(0.3)
    contention(spawn_user(member))
    assert holder.running(), holder.stderr()
    assert holder.terminate() == 0
    assert "lock lost" not in holder.stderr(), holder.stderr()
    assert member.v3_value(key) is None


@pytest.mark.parametrize("flavour", ALL + ["etcd368"])
def test_check_and_status_as_the_user(auth_members, spawn_user, admin, flavour):
    member = auth_members(flavour)
    code, out, err = admin(member, "--check")
    assert code == 0, out + err
    assert "auth     ok" in out and "who may write the lock" in out, out
    assert "v3 served" in out and "cluster ?" not in out, out
    refused = flavour == "etcd368"  # maintenance status is root's there
    assert ("maintenance status refused" in out) == refused, out
    code, out, err = admin(member, "--status")
    assert (code, err) == (1, ""), out + err
    assert "v3  free" in out, out
    holder = spawn_user(member)
    assert holder.status() == "0", holder.stderr()
    code, out, err = admin(member, "--status")
    assert (code, err) == (0, ""), out + err
    assert "held by" in out and "pid %d" % holder.proc.pid in out, out
    code, out, err = admin(member, "--check", "--json")
    assert code == 0, out + err
    assert json.loads(out)["ok"] is True
    assert holder.terminate() == 0


@pytest.mark.parametrize("flavour", NEWER_FLAVOURS + ["etcd368"])
def test_wrong_password_is_one_line(auth_members, spawn_user, flavour):
    # 3.6 says {"code", "message"}, without "error".
    member = auth_members(flavour)
    helper = spawn_user(member, password="wr0ng-Pa55")
    assert helper.status() == "3"
    assert helper.wait() == 3
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "authentication failed" in lines[0], lines
    assert member.url in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.parametrize("flavour", NEWER_FLAVOURS + ["etcd368"])
def test_user_takes_the_lock_of_a_3_member_cluster(tmp_path, spawn_user, flavour):
    """Without expected_cluster_id, more than half of the listed members
    must name their cluster: 3.5.28+ does that only with a token, and
    3.6.0-3.6.11 only to root."""
    cluster = start_cluster(flavour, str(tmp_path / "cluster"))
    try:
        add_lock_user(cluster, USER, PASSWORD)
        cluster.v3("/auth/role/add", {"name": "root"})
        cluster.v3("/auth/user/add", {"name": ROOT, "password": ROOT_PASSWORD})
        cluster.v3("/auth/user/grant", {"user": ROOT, "role": "root"})
        cluster.v3("/auth/enable", {})
        holder = spawn_user(None, host=cluster.hosts())
        assert holder.status() == "0", holder.stderr()
        other = cluster.members[2:] + cluster.members[:2]
        contention(spawn_user(None, host=cluster.hosts(other)))
        assert holder.terminate() == 0
        assert holder.stderr() == ""
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------
# Found by the adversarial review of issue 17's changes

def _auth_on(member):
    add_lock_user(member, USER, PASSWORD)
    enable_v3_auth(member, ROOT, ROOT_PASSWORD)


def test_check_refuses_members_of_two_clusters_with_auth(tmp_path, admin, spawn_user):
    """Two single-member clusters listed, auth on in both: the member of the
    other cluster refuses our token, so it names no cluster.  --check said
    the helper would work (it counted members that answered, not members
    that named the lock's cluster); the helper says '3'."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_etcd("etcd35new", str(tmp_path / "a"))
    second = start_etcd("etcd35new", str(tmp_path / "b"))
    try:
        for member in (first, second):
            _auth_on(member)
        hosts = "127.0.0.1:%d,127.0.0.1:%d" % (first.port, second.port)
        path = user_config(str(tmp_path / "two.conf"), None, "two", host=hosts)
        done = subprocess.run([sys.executable, HELPER, "--check", "-c", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        out = done.stdout.decode()
        assert done.returncode == 3, out
        cluster = [line for line in out.splitlines() if line.startswith("cluster ")]
        assert cluster and cluster[0].split()[1] == "error", out
        assert "did not name its cluster" in cluster[0], out
        helper = spawn_user(None, host=hosts)
        assert helper.status(timeout=30) == "3", helper.stderr()
        assert "cannot confirm" in helper.stderr(), helper.stderr()
    finally:
        first.stop()
        second.stop()


def test_an_old_token_at_the_cluster_check_gets_a_new_one(tmp_path, spawn_user):
    """A change to users or roles between our authentication and the check
    of the lock's cluster makes our token old there: the check never
    succeeded with it and the helper said '3' (etcd 3.6.0-3.6.11).  A proxy
    before two members answers the first token as etcd then does, each time
    (etcd gives that answer only in such a race); a new token passes."""
    from fakeetcd import Proxy
    cluster = start_cluster("etcd35new", str(tmp_path / "cluster"))
    proxies = []
    try:
        _auth_on(cluster)
        body = (b'{"error":"etcdserver: revision of auth store is old","code":9,'
                b'"message":"etcdserver: revision of auth store is old"}')
        old = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        first_token = []

        def token_of(request):
            for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"authorization":
                    return value.strip()
            return None

        def old_token(sock, request, answer):
            token = token_of(request)
            if not first_token:
                first_token.append(token)
            sock.sendall(old if token == first_token[0] else answer)
        for member in cluster.members[1:]:
            proxy = Proxy(member.port)
            proxy.fault, proxy.fault_if = old_token, lambda request: token_of(request)
            proxies.append(proxy)
        hosts = ",".join(["127.0.0.1:%d" % cluster.members[0].port] +
                         ["127.0.0.1:%d" % proxy.port for proxy in proxies])
        holder = spawn_user(None, host=hosts)
        assert holder.status(timeout=30) == "0", holder.stderr()
        assert first_token and any(proxy.faulted for proxy in proxies)
        assert holder.terminate() == 0
    finally:
        for proxy in proxies:
            proxy.close()
        cluster.stop()
