"""Several etcd members: the three forms of listing them (host as a comma
list or python-etcd's tuples, endpoints), and failover while holding: a
member killed, paused or dead from the start never costs the lock while a
quorum answers; a lost quorum does, before lock_ttl; a member of another
cluster is an error, and so is one that answers only once the lock is held;
without expected_cluster_id, a majority of the listed members must confirm
the cluster before '0'.

Tests that break members get a cluster of their own (own_cluster) and run
one holder per api of the flavour side by side, each on its own lock, so
every api sees the same failure at the same cost; the others share one
cluster per flavour (cluster) and run once per api."""

import json
import subprocess
import sys
import time
import uuid

import pytest

from conftest import HELPER, held_apis, helper_env, write_config
from etcdmember import MAIN_FLAVOURS, free_port, start_cluster, start_etcd, wait_for
from delayproxy import DelayProxy

TTL, REFRESH = 3, 1
SETTINGS = {"lock_ttl": TTL, "refresh": REFRESH}

# Every API on every flavour that serves it.
APIS = {"etcd34": ["v2", "v3", "auto"], "etcd35": ["v3", "auto"]}
CASES = [(flavour, api) for flavour in sorted(APIS) for api in APIS[flavour]]


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """One 3-member cluster per flavour for the tests that break nothing,
    started on first use."""
    made = {}

    def get(flavour):
        if flavour not in made:
            made[flavour] = start_cluster(flavour, str(tmp_path_factory.mktemp("cluster-" + flavour)))
        return made[flavour]
    yield get
    for cluster in made.values():
        cluster.stop()


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def case(request):
    return request.param


@pytest.fixture
def cluster(case, clusters):
    return clusters(case[0])


@pytest.fixture
def api(case):
    return case[1]


@pytest.fixture(params=MAIN_FLAVOURS)
def own_cluster(request, tmp_path):
    """A 3-member cluster of each flavour for this test alone (to break)."""
    cluster = start_cluster(request.param, str(tmp_path / "cluster"))
    yield cluster
    cluster.stop()  # SIGKILL: paused members too


def new_lock_name():
    return "t-" + uuid.uuid4().hex[:12]


def listed(cluster, first=None, last=None):
    """The cluster's members, `first` first and `last` last."""
    members = [m for m in cluster.members if m is not first and m is not last]
    return ([first] if first else []) + members + ([last] if last else [])


class Holding:
    """A helper that took (or is to take) the lock `lock_name` through `api`."""

    def __init__(self, api, lock_name, helper, settings):
        self.api = api
        self.lock_name = lock_name
        self.helper = helper
        self.settings = settings
        self.values = None

    @property
    def key(self):
        return "/_locks/_ctdb/" + self.lock_name

    def read(self, cluster):
        return {where: cluster.value(where, self.key) for where in held_apis(self.api, cluster)}

    def contend(self, spawn, **members):
        """Another helper for the same lock; `members`: its own host or
        endpoints instead of the holder's."""
        settings = dict(self.settings)
        if members:
            for name in ("host", "port", "endpoints"):
                settings.pop(name, None)
        return spawn(None, args=(), **dict(settings, **members))


def take(spawn, cluster, apis, **settings):
    """One helper per api, each on a lock of its own, all given `settings`;
    each must report '0' and hold its value in every keyspace of its api."""
    holdings = []
    for api in apis:
        name = new_lock_name()
        given = dict(SETTINGS, api=api, lock_name=name, **settings)
        holdings.append(Holding(api, name, spawn(None, args=(), **given), given))
    for h in holdings:
        assert h.helper.status() == "0", (h.api, h.helper.stderr())
    for h in holdings:
        h.values = h.read(cluster)
        pid = "pid=%d" % h.helper.proc.pid
        assert all(v and pid in v for v in h.values.values()), (h.api, h.values)
    return holdings


def keep_holding(cluster, holdings, seconds):
    """For `seconds` (and once more at the end): every holder runs and its
    values in etcd are the ones it took."""
    end = time.monotonic() + seconds
    while True:
        for h in holdings:
            assert h.helper.running(), "api %s: the holder exited after %.1fs: %s" % (
                h.api, time.monotonic() - (end - seconds), h.helper.stderr())
            assert h.read(cluster) == h.values, (h.api, h.read(cluster), h.values)
        if time.monotonic() >= end:
            return
        time.sleep(0.25)


def contention(helper, api):
    assert helper.status() == "1", (api, helper.stderr())
    assert helper.wait() == 1, api
    assert helper.rest_of_stdout() == b"", api


def release(cluster, holdings):
    """SIGTERM: each exits 0, and the lock is gone from every keyspace."""
    for h in holdings:
        assert h.helper.terminate() == 0, (h.api, h.helper.stderr())
        assert h.helper.rest_of_stdout() == b"", h.api
        assert "lock lost" not in h.helper.stderr(), (h.api, h.helper.stderr())
        assert set(h.read(cluster).values()) == {None}, (h.api, h.read(cluster))


# ---------------------------------------------------------------------------
# The three forms, on a healthy cluster

def test_comma_list_takes_contends_and_releases(cluster, api, spawn):
    (holding,) = take(spawn, cluster, [api], host=cluster.hosts())
    # Contenders that ask other members first see the lock all the same.
    for first in cluster.members[1:]:
        contention(holding.contend(spawn, host=cluster.hosts(listed(cluster, first))), api)
    assert holding.helper.running()
    release(cluster, [holding])
    assert holding.helper.stderr() == ""  # a good run is silent


@pytest.mark.parametrize("form", ["tuples", "endpoints"])
def test_tuples_and_endpoints_take_the_lock(cluster, api, spawn, form):
    if form == "tuples":
        given, other = {"host": cluster.host_tuples()}, {"endpoints": cluster.endpoints()}
    else:
        given, other = {"endpoints": cluster.endpoints()}, {"host": cluster.host_tuples()}
    (holding,) = take(spawn, cluster, [api], **given)
    # The same lock, whichever form a contender's config uses.
    contention(holding.contend(spawn, **other), api)
    release(cluster, [holding])
    assert holding.helper.stderr() == ""


@pytest.mark.parametrize("setting,value", [("host", "127.0.0.1"), ("port", "2379"),
                                           ("protocol", "http")])
def test_endpoints_with_host_port_or_protocol_is_a_config_error(spawn, setting, value):
    helper = spawn(None, args=(), endpoints="http://127.0.0.1:1, http://127.0.0.1:2",
                   **{setting: value})
    assert helper.status() == "3"
    assert helper.wait() == 3
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ctdb_etcd_lock: config error"), lines
    assert "endpoints" in lines[0] and setting in lines[0], lines


# ---------------------------------------------------------------------------
# Members lost while holding: every api of the flavour side by side

def test_member_the_holder_talks_to_killed(own_cluster, spawn):
    cluster = own_cluster
    first = cluster.followers()[0]  # no election: failover alone
    hosts = cluster.hosts(listed(cluster, first))
    holdings = take(spawn, cluster, APIS[cluster.flavour], host=hosts)
    first.kill()
    contenders = [h.contend(spawn) for h in holdings]  # meanwhile, same list
    keep_holding(cluster, holdings, 2 * TTL)
    for h, contender in zip(holdings, contenders):
        contention(contender, h.api)
    release(cluster, holdings)


@pytest.mark.parametrize("position", ["first", "last"])
def test_leader_killed(own_cluster, spawn, position):
    # Listed first, the holder talks to the leader; last, to a follower
    # that has no leader until the election is over.
    cluster = own_cluster
    leader = cluster.leader()
    order = listed(cluster, first=leader) if position == "first" else listed(cluster, last=leader)
    holdings = take(spawn, cluster, APIS[cluster.flavour], host=cluster.hosts(order))
    leader.kill()
    killed = time.monotonic()
    assert cluster.leader() is not leader
    contenders = [h.contend(spawn) for h in holdings]  # once a new leader is there
    keep_holding(cluster, holdings, 2 * TTL - (time.monotonic() - killed))
    for h, contender in zip(holdings, contenders):
        contention(contender, h.api)
    release(cluster, holdings)


@pytest.mark.parametrize("paused", ["follower", "leader"])
def test_member_the_holder_talks_to_paused(own_cluster, spawn, paused):
    # SIGSTOP: connections are accepted and requests sent, but never answered.
    cluster = own_cluster
    member = cluster.leader() if paused == "leader" else cluster.followers()[0]
    holdings = take(spawn, cluster, APIS[cluster.flavour],
                    host=cluster.hosts(listed(cluster, member)))
    member.pause()
    try:
        contenders = [h.contend(spawn) for h in holdings]  # meanwhile, same list
        keep_holding(cluster, holdings, 2 * TTL)
        for h, contender in zip(holdings, contenders):
            contention(contender, h.api)
        release(cluster, holdings)
    finally:
        member.resume()


def test_quorum_lost_gives_the_lock_up_before_the_ttl(own_cluster, spawn):
    # The member the holder talks to stays up, alone: it answers nothing
    # that needs a quorum.
    cluster = own_cluster
    first = cluster.followers()[0]
    holdings = take(spawn, cluster, APIS[cluster.flavour],
                    host=cluster.hosts(listed(cluster, first)))
    for member in cluster.members:
        if member is not first:
            member.kill()
    lost = time.monotonic()
    exited = {}

    def all_exited():
        for h in holdings:
            if h.api not in exited and not h.helper.running():
                exited[h.api] = time.monotonic() - lost
        return len(exited) == len(holdings)
    deadline = TTL + 0.5
    try:
        wait_for(all_exited, deadline + 2, "every holder to give the lock up")
    except AssertionError:
        raise AssertionError("still running %.1fs after quorum was lost: %s" % (
            time.monotonic() - lost, {h.api: h.helper.stderr() for h in holdings
                                      if h.api not in exited}))
    for h in holdings:
        assert exited[h.api] < deadline, (h.api, exited[h.api], h.helper.stderr())
        lines = h.helper.stderr_lines()
        assert any(line.startswith("ctdb_etcd_lock: lock lost") for line in lines), (h.api, lines)
        assert h.helper.rest_of_stdout() == b"", h.api  # nothing after the '0'


def test_member_dead_before_start_is_passed_over(own_cluster, spawn):
    cluster = own_cluster
    dead = cluster.followers()[0]  # no election
    dead.kill()
    hosts = cluster.hosts(listed(cluster, dead))
    for api in APIS[cluster.flavour]:
        helper = spawn(None, args=(), api=api, lock_name=new_lock_name(), host=hosts, **SETTINGS)
        assert helper.status(timeout=5) == "0", (api, helper.stderr())
        took = time.monotonic() - helper.started
        assert took < 2, (api, took)
        assert helper.terminate() == 0, (api, helper.stderr())


# ---------------------------------------------------------------------------
# A member of another cluster among them

def cluster_error(helper, api, within):
    """'3' with one line naming the cluster, or '0' then 'lock lost' naming
    it within `within` seconds."""
    status = helper.status()
    assert status in ("0", "3"), (api, status, helper.stderr())
    helper.wait(timeout=within if status == "0" else 15)
    lines = helper.stderr_lines()
    if status == "3":
        assert len(lines) == 1, (api, lines)
    else:
        lines = [line for line in lines if "lock lost" in line]
        assert lines, (api, helper.stderr())
    assert "cluster" in lines[-1], (api, lines)
    assert helper.rest_of_stdout() == b"", api
    return status


def test_foreign_member_listed_first_is_an_error(cluster, api, etcd_members, spawn):
    # The foreign member would grant this lock: a helper that asked only it
    # would report '0' and hold it there.
    foreign = etcd_members(cluster.flavour)
    assert foreign.cluster_id() != cluster.cluster_id()
    name = new_lock_name()
    helper = spawn(None, args=(), api=api, lock_name=name,
                   host="127.0.0.1:%d, %s" % (foreign.port, cluster.hosts()), **SETTINGS)
    cluster_error(helper, api, TTL + 0.5)
    key = "/_locks/_ctdb/" + name
    assert {cluster.value(where, key) for where in held_apis(api, cluster)} == {None}


def test_foreign_member_met_on_failover_is_an_error(own_cluster, etcd_members, spawn):
    # Listed second: met when the first member dies (unless the helper
    # checked every member before it took the lock: then '3' at once).
    cluster = own_cluster
    foreign = etcd_members(cluster.flavour)
    assert foreign.cluster_id() != cluster.cluster_id()
    first = cluster.followers()[0]
    rest = listed(cluster, first)[1:]
    hosts = "127.0.0.1:%d, 127.0.0.1:%d, %s" % (first.port, foreign.port, cluster.hosts(rest))
    helpers = {api: spawn(None, args=(), api=api, lock_name=new_lock_name(), host=hosts,
                          **SETTINGS)
               for api in APIS[cluster.flavour]}
    for api, helper in helpers.items():
        assert helper.status() in ("0", "3"), (api, helper.stderr())
    first.kill()
    for api, helper in helpers.items():
        cluster_error(helper, api, TTL + 0.5)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_stray_member_and_the_cluster_out_of_reach_at_start(clusters, etcd_members, spawn, api):
    # Node 1 lists [X, A]: X a stray one-member etcd listed by mistake, A
    # the real cluster, whose answers reach node 1 0.7 s late as it starts;
    # node 2 lists A, and holds.  Node 1 would take the lock on X: it must
    # not say '0' (it says 3, naming X's cluster).
    cluster, stray = clusters("etcd34"), etcd_members("etcd34")
    assert stray.cluster_id() != cluster.cluster_id()
    name = new_lock_name()
    node2 = spawn(None, args=(), api=api, lock_name=name, host=cluster.hosts(), **SETTINGS)
    assert node2.status() == "0", node2.stderr()
    proxy = DelayProxy(cluster.members[0].port)
    proxy.delay = 0.7
    try:
        node1 = spawn(None, args=(), api=api, lock_name=name, host="127.0.0.1:%d, "
                      "127.0.0.1:%d" % (stray.port, proxy.port), **SETTINGS)
        assert node1.status() == "3", node1.stderr()
        assert node1.wait() == 3
    finally:
        proxy.close()
    lines = node1.stderr_lines()
    assert len(lines) == 1 and stray.cluster_id() in lines[0], lines
    assert "127.0.0.1:%d" % proxy.port in lines[0], lines
    assert node2.running(), node2.stderr()
    assert stray.value(api, "/_locks/_ctdb/" + name) is None  # given back on X
    assert node2.terminate() == 0, node2.stderr()


def test_majority_of_the_listed_members_or_expected_cluster_id(etcd_members, spawn):
    # One of two listed members answers: no majority, so '3' naming both
    # (the cost of listing only some members); expected_cluster_id instead
    # vouches for every answer.
    etcd = etcd_members("etcd35")
    down = "127.0.0.1:%d" % free_port()
    hosts = "127.0.0.1:%d, %s" % (etcd.port, down)
    helper = spawn(None, args=(), api="v3", lock_name=new_lock_name(), host=hosts, **SETTINGS)
    assert helper.status() == "3", helper.stderr()
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "cannot confirm" in lines[0], lines
    assert down in lines[0] and etcd.cluster_id() in lines[0], lines
    assert "expected_cluster_id" in lines[0], lines
    helper = spawn(None, args=(), api="v3", lock_name=new_lock_name(), host=hosts,
                   expected_cluster_id=etcd.cluster_id(), **SETTINGS)
    assert helper.status() == "0", helper.stderr()
    assert helper.terminate() == 0


@pytest.fixture(scope="module")
def built_alike(tmp_path_factory):
    """Two one-member clusters set up from etcd's defaults (name, peer URL,
    token): one cluster id and one member id between them."""
    members = [start_etcd("etcd34", str(tmp_path_factory.mktemp(name)), built_alike=True)
               for name in ("stray", "real")]
    yield members
    for member in members:
        member.stop()


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_clusters_built_alike_are_two_members_not_one(built_alike, spawn, api):
    # Node 1 lists [X, A], X a stray with A's cluster id (both from etcd's
    # defaults); node 2 lists A and holds.  X and A are one member by id,
    # not a majority of two: node 1 must not hold on X.
    stray, real = built_alike
    assert stray.cluster_id() == real.cluster_id()
    name = new_lock_name()
    node2 = spawn(None, args=(), api=api, lock_name=name, host="127.0.0.1:%d" % real.port,
                  **SETTINGS)
    assert node2.status() == "0", node2.stderr()
    node1 = spawn(None, args=(), api=api, lock_name=name, host="127.0.0.1:%d, 127.0.0.1:%d"
                  % (stray.port, real.port), **SETTINGS)
    assert node1.status() == "3", node1.stderr()
    [line] = node1.stderr_lines()
    assert "cannot confirm" in line and "one member under two names" in line, line
    assert node2.terminate() == 0


def test_one_member_under_two_names_counts_once(etcd_members, tmp_path, spawn):
    # [127.0.0.1:X, localhost:X, 127.0.0.1:A]: X twice is no majority of
    # three; A, asked, belongs to another cluster.
    (tmp_path / "stray").mkdir()
    stray = start_etcd("etcd34", str(tmp_path / "stray"))
    try:
        real = etcd_members("etcd34")
        node1 = spawn(None, args=(), api="v3", lock_name=new_lock_name(),
                      host="127.0.0.1:%d, localhost:%d, 127.0.0.1:%d" % (
                          stray.port, stray.port, real.port), **SETTINGS)
        assert node1.status() == "3", node1.stderr()
        [line] = node1.stderr_lines()
        assert real.cluster_id() in line and stray.cluster_id() in line, line
    finally:
        stray.stop()


def test_member_of_another_cluster_heard_while_holding(clusters, etcd_members, spawn):
    # Listed: two of the cluster's three members (a majority of the list)
    # and a stray member X, whose traffic is held back at first.  Once X
    # answers, its cluster id ends the hold.
    cluster, stray = clusters("etcd34"), etcd_members("etcd34")
    proxy = DelayProxy(stray.port)
    proxy.delay = 60
    try:
        hosts = "%s, 127.0.0.1:%d" % (cluster.hosts(cluster.members[:2]), proxy.port)
        holdings = take(spawn, cluster, APIS["etcd34"], host=hosts)
        keep_holding(cluster, holdings, 2 * REFRESH)  # X asked meanwhile, and silent
        proxy.delay = 0
        reachable = time.monotonic()
        for h in holdings:
            h.helper.wait(timeout=max(0.1, reachable + 3 * REFRESH + 0.5 - time.monotonic()))
            lost = [line for line in h.helper.stderr_lines() if "lock lost" in line]
            assert len(lost) == 1, (h.api, h.helper.stderr())
            for text in ("127.0.0.1:%d" % proxy.port, stray.cluster_id(),
                         cluster.cluster_id()):
                assert text in lost[0], (h.api, text, lost)
            assert h.helper.rest_of_stdout() == b"", h.api
            assert set(h.read(cluster).values()) == {None}, (h.api, h.read(cluster))
    finally:
        proxy.close()


def test_check_recommends_expected_cluster_id(clusters, tmp_path, stubs):
    cluster = clusters("etcd35")

    def check(*args, **settings):
        config = write_config(str(tmp_path / "check"), dict(
            host=cluster.hosts(), lock_name=new_lock_name(), **settings))
        done = subprocess.run([sys.executable, HELPER, "--check"] + list(args) + ["-c", config],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60,
                              env=helper_env(stubs, tmp_path))
        return done.returncode, done.stdout.decode()
    code, out = check()
    assert code == 0, out
    rows = [line for line in out.splitlines() if "expected_cluster_id" in line]
    assert len(rows) == 1 and rows[0].split()[:2] == ["cluster", "warning"], out
    assert "expected_cluster_id = %s" % cluster.cluster_id() in rows[0], out
    code, out = check("--json")
    assert code == 0 and any(row["level"] == "warning" and cluster.cluster_id() in row["text"]
                             for row in json.loads(out)["checks"] if row["what"] == "cluster")
    code, out = check(expected_cluster_id=cluster.cluster_id())
    assert code == 0 and "expected_cluster_id" not in out, out
