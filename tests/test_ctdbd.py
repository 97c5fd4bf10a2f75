"""Three real ctdbd daemons keep their cluster lock with the helper, in etcd,
while their nodes, their helpers and etcd fail under them: ctdb 4.17 (this
host's), and in Debian roots (tests/lib/make_ctdb_root.sh) Debian 13's 4.22,
the backports' (4.24 when this was written) and unstable's (4.25), as ctdbd
really runs the helper.  Test ids name the version the root holds
(``4.24-auto``; the suite while the root is not built: ``sid-auto``).

One cluster per CTDB version and api goes through every scenario in turn,
ordered so that no node needs to be started again (a node rejoining waits
out ctdbd's 10 s re-recovery timeout):

* it comes up healthy with one leader, whose helper holds the lock in etcd;
* only the leader's helper is SIGKILLed: a leader again within lock_ttl + 8 s;
* etcd stops answering (SIGSTOP) for longer than lock_ttl: no helper claims
  the lock meanwhile, and after SIGCONT the cluster is healthy with a leader;
* the leader's whole node is SIGKILLed: a new leader within lock_ttl + 6 s;
* the leader's daemons are SIGKILLed (ctdbd and its recovery daemon, the
  helper's parent), the helper left an orphan: it lets go within 0.5 s, and
  gives its lock back;

and after each, no log of any node says that a second node could take the
lock, that testing the lock failed with an unexpected status, or holds a
traceback.  Times are safety limits from the kill, not speed assertions.
"""

import os
import time

import pytest

from ctdbnodes import SUITES, CtdbCluster, alive, ctdb_root, ctdb_version, suite_root_path
from etcdmember import start_etcd, wait_for

LOCK_TTL = 4
REFRESH = 1
HEALTHY = 45  # seconds for a (re)started node to be OK and the cluster NORMAL

# (where ctdbd comes from, api): "4.17" and "host" are this machine's ctdbd,
# a Debian suite the root make_ctdb_root.sh builds of it.
CASES = [("4.17", "auto"), ("trixie", "auto"), ("trixie-backports", "auto"), ("sid", "auto"),
         ("host", "v2"), ("host", "v3")]
HOST_VERSION = ctdb_version("/")


def case_id(case):
    """'4.24-auto': the version in a suite's root, once built."""
    where, api = case
    if where in SUITES and os.path.exists(suite_root_path(where) + ".complete"):
        where = ctdb_version(suite_root_path(where))
    return "%s-%s" % (where, api)


@pytest.fixture(params=CASES, ids=[case_id(case) for case in CASES])
def cluster(request, tmp_path):
    where, api = request.param
    root = "/"
    if where in SUITES:
        root, why_not = ctdb_root(where)
        if root is None:
            pytest.skip(why_not)
    elif where not in ("host", HOST_VERSION):
        pytest.skip("ctdb %s is Debian 12's; this host has %s" % (where, HOST_VERSION))
    # v3 alone on etcd 3.5 (no v2 there); auto and v2 on 3.4, which serves both.
    (tmp_path / "etcd").mkdir()
    etcd = start_etcd("etcd35" if api == "v3" else "etcd34", str(tmp_path / "etcd"))
    nodes = None
    try:
        nodes = CtdbCluster(str(tmp_path), etcd, {"lock_ttl": LOCK_TTL, "refresh": REFRESH,
                                                  "api": api}, root=root).setup()
        if where not in SUITES:
            assert where in ("host", nodes.version), (nodes.version, where)
        yield nodes
    finally:
        if nodes is not None:
            nodes.teardown()
        etcd.stop()


def no_log_problems(nodes, after):
    problems = nodes.log_problems()
    assert not problems, "after %s:\n%s" % (after, "\n".join(problems))


def within(started, limit, nodes, what, not_helper=None):
    """Wait, until ``limit`` seconds after ``started``, for a leader whose
    helper holds the lock; returns (pnn, helper, seconds since started)."""
    left = started + limit - time.monotonic()
    try:
        pnn, helper, _ = nodes.wait_leader(max(left, 0.1), not_helper=not_helper)
    except AssertionError as e:
        raise AssertionError("%s: no leader holding the lock within %ss: %s\n%s"
                             % (what, limit, e, nodes.describe())) from None
    return pnn, helper, time.monotonic() - started


def test_cluster_keeps_one_leader_through_faults(cluster):
    nodes = cluster

    # Up: healthy, one leader, and etcd names its helper as the holder.
    started = time.monotonic()
    nodes.start(timeout=HEALTHY)
    leader, helper, _ = within(time.monotonic(), 15, nodes, "start")
    print("up after %.1fs" % (time.monotonic() - started))
    spawned = [node.pnn for node in nodes.nodes if node.leader_helper() is not None]
    assert spawned == [leader], "one helper holds for a recovery daemon, the leader's"
    assert nodes.holder() == (leader, helper)
    no_log_problems(nodes, "start")

    # Only the leader's helper dies.
    killed_helper, killed = nodes.nodes[leader].kill_helper()
    leader, helper, took = within(killed, LOCK_TTL + 8, nodes, "leader's helper killed",
                                  not_helper=killed_helper)
    print("helper killed: leader %d again after %.1fs" % (leader, took))
    nodes.wait_healthy(HEALTHY)
    no_log_problems(nodes, "leader's helper killed")

    # etcd stops answering for longer than lock_ttl.
    leader, helper = nodes.leader_holding() or within(time.monotonic(), 15, nodes, "healthy")[:2]
    logs = nodes.logs()
    nodes.etcd.pause()
    paused = time.monotonic()
    try:
        # The holder cannot refresh: it gives the lock up before it could expire.
        wait_for(lambda: not alive(helper), LOCK_TTL, "the holder to let go while etcd is away")
        # Stay away past the TTL (the length of the fault, not a wait for a condition).
        time.sleep(max(paused + LOCK_TTL + 2 - time.monotonic(), 0))
        claims = []
        for pnn, text in nodes.logs().items():
            claims += ["n%d: %s" % (pnn, line) for line in text[len(logs[pnn]):].splitlines()
                       if "Cluster lock taken successfully" in line or "took lock" in line]
        assert not claims, "the lock was claimed while etcd was away:\n" + "\n".join(claims)
    finally:
        nodes.etcd.resume()
    returned = time.monotonic()
    leader, helper, took = within(returned, LOCK_TTL + 15, nodes, "etcd back")
    print("etcd back: leader %d after %.1fs" % (leader, took))
    nodes.wait_healthy(HEALTHY)
    no_log_problems(nodes, "etcd paused past lock_ttl")

    # The leader's whole node dies at once.
    victim = nodes.nodes[leader]
    killed = time.monotonic()
    victim.kill()
    leader, helper, took = within(killed, LOCK_TTL + 6, nodes, "whole leader node killed")
    assert leader != victim.pnn
    print("whole node killed: new leader %d after %.1fs" % (leader, took))
    nodes.wait_healthy(HEALTHY)
    no_log_problems(nodes, "whole leader node killed")

    # The leader's daemons die; its helper is an orphan and must let go at
    # once.  (Two nodes are left: starting the killed one again would cost
    # ctdbd's re-recovery timeout and prove nothing more.)
    victim = nodes.nodes[leader]
    orphans, killed = victim.kill_daemons()
    assert helper in orphans
    gone = wait_for(lambda: not alive(helper) and [time.monotonic()], 5,
                    "the orphaned helper to exit")[0]
    assert gone - killed <= 0.5, "the orphan held on for %.2fs" % (gone - killed)
    print("daemons killed: the orphaned helper exited after %.3fs" % (gone - killed))
    holder = nodes.holder()
    assert holder is None or holder[1] != helper, "the orphan's lock is still in etcd"
    leader, helper, took = within(killed, LOCK_TTL + 8, nodes, "leader's daemons killed")
    print("daemons killed: new leader %d after %.1fs" % (leader, took))
    no_log_problems(nodes, "leader's daemons killed, helper orphaned")
