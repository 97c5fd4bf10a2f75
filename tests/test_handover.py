"""The handover: a contender that finds the holder's lock running out (the
holder missed its refreshes) waits for it to expire and takes it, within
handover_wait; a healthy holder still means '1' at once."""

import os
import select
import signal
import time

import pytest

from conftest import HELPER, alive, eof_clock, next_holder, the_case_member
from etcdmember import wait_for
from delayproxy import DelayProxy

# A live holder has at least lock_ttl - refresh (4 s) left; one that stops
# refreshing is "running out" below lock_ttl - refresh - 1.
SETTINGS = {"lock_ttl": 6, "refresh": 1, "handover_wait": 3}


# Branches of the wait itself run once per keyspace a contender meets first
# (and once with both): the full set of cases is for taking and contending.
EACH_KIND = [("etcd34", "v2"), ("etcd35", "v3"), ("etcd34", "auto")]
each_kind = pytest.mark.parametrize("case", EACH_KIND, indirect=True,
                                    ids=["-".join(case) for case in EACH_KIND])


etcd = pytest.fixture(name="etcd")(the_case_member)


def where(api):
    """The keyspace a contender meets the holder in first (v3 before v2)."""
    return "v2" if api == "v2" else "v3"


def running_out(etcd, api, key):
    """Wait until the holder's lock has about 2 s left: etcd counts whole
    seconds, rounding down (v3) or up (v2)."""
    seconds = 1 if where(api) == "v3" else 2
    wait_for(lambda: (etcd.left(where(api), key) or 99) <= seconds, 15,
             "the holder's lock to run down to about 2 s")


def dead_holder(etcd, key):
    """A v3 holder that never refreshes again: its key, on a lease nobody
    keeps alive, runs out to 1 s."""
    lease = etcd.v3("/lease/grant", {"TTL": SETTINGS["lock_ttl"]})["ID"]
    etcd.v3_put(key, "host=gone pnn=1 pid=1 id=00", lease=lease)
    running_out(etcd, "v3", key)


def contender_config(tmp_path, port, key):
    config = tmp_path / "contender"
    config.write_text("".join("%s = %s\n" % item for item in dict(
        SETTINGS, port=port, api="v3", lock_name=key.rsplit("/", 1)[1]).items()))
    return config


def killed_holder(etcd, api, spawn, key):
    """A helper that took the lock, SIGKILLed: its lock runs out to about 2 s."""
    holder = spawn(etcd, api=api, **SETTINGS)
    assert holder.status() == "0"
    holder.proc.kill()
    holder.wait()
    running_out(etcd, api, key)


def waiting(helper):
    wait_for(lambda: "waiting up to" in helper.stderr(), 10,
             "the contender to say it waits; stderr: %s" % helper.stderr())


def test_healthy_holder_means_1_at_once(etcd, api, spawn):
    holder = spawn(etcd, api=api, **SETTINGS)
    assert holder.status() == "0"
    other = spawn(etcd, api=api, **SETTINGS)
    assert other.status() == "1"
    assert other.wait() == 1
    assert "waiting" not in other.stderr()
    assert "s left)" in other.stderr()  # -v names the holder and its time left
    assert holder.running()


def test_dead_holder_is_taken_at_expiry(etcd, api, spawn, key):
    killed_holder(etcd, api, spawn, key)
    other = spawn(etcd, api=api, args=("-vv",), **SETTINGS)
    asked = time.monotonic()
    assert other.status(timeout=10) == "0", other.stderr()
    took = time.monotonic() - asked
    assert took < SETTINGS["handover_wait"] + 2, took
    log = other.stderr()
    assert "missed its refresh" in log and "its lock expired" in log, log
    assert "pid=%d" % other.proc.pid in etcd.value(where(api), key)
    assert other.terminate() == 0


def test_by_default_the_wait_covers_all_a_dead_holders_lock_has_left(etcd, api, spawn, key):
    """handover_wait unset is lock_ttl: a contender that meets a dead
    holder's lock with 4 to 6 s left (more than the old default of 3 s
    covered) waits it out and takes it, rather than costing ctdbd an
    election."""
    settings = {"lock_ttl": 9, "refresh": 1}
    holder = spawn(etcd, api=api, **settings)
    assert holder.status() == "0"
    holder.proc.kill()
    holder.wait()
    wait_for(lambda: (etcd.left(where(api), key) or 99) <= 5, 15,
             "the holder's lock to run down to about 5 s")
    other = spawn(etcd, api=api, args=("-vv",), **settings)
    assert other.status(timeout=12) == "0", other.stderr()
    assert "waiting up to 9.0 s" in other.stderr(), other.stderr()
    assert "pid=%d" % other.proc.pid in etcd.value(where(api), key)
    assert other.terminate() == 0


@each_kind
def test_slow_holder_that_refreshes_means_1(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, **SETTINGS)
    assert holder.status() == "0"
    holder.proc.send_signal(signal.SIGSTOP)
    try:
        running_out(etcd, api, key)
        other = spawn(etcd, api=api, **SETTINGS)
        waiting(other)
    finally:
        holder.proc.send_signal(signal.SIGCONT)
    assert other.status(timeout=10) == "1", other.stderr()
    assert "it refreshed" in other.stderr()
    assert holder.running()
    assert "pid=%d" % holder.proc.pid in etcd.value(where(api), key)


@each_kind
def test_sigterm_during_the_wait_leaves_nothing_behind(etcd, api, spawn, key):
    killed_holder(etcd, api, spawn, key)
    other = spawn(etcd, api=api, **SETTINGS)
    waiting(other)
    signalled = time.monotonic()
    other.proc.send_signal(signal.SIGTERM)
    assert other.wait() == 0
    assert time.monotonic() - signalled < 0.5
    assert other.status_now() == ""  # no status: ctdbd asked us to stop
    mine = "pid=%d" % other.proc.pid
    assert not any(mine in entry.get("value", "") for entry in etcd.v2_entries(key)) \
        if etcd.serves_v2 else True
    assert mine not in (etcd.v3_value(key) or "")


def test_parent_gone_during_the_wait(etcd34, spawn, spawn_under_parent, key, tmp_path):
    killed_holder(etcd34, "v3", spawn, key)
    parent, pid = spawn_under_parent(contender_config(tmp_path, etcd34.port, key),
                                     helper_argv=[HELPER, "-v"], status=None)
    said = b""
    while b"waiting up to" not in said:  # the contender's stderr is its parent's
        ready, _, _ = select.select([parent.stderr], [], [], 10)
        assert ready, said
        said += os.read(parent.stderr.fileno(), 4096)
    killed = time.monotonic()
    parent.kill()
    parent.wait()
    wait_for(lambda: not alive(pid), 2, "the contender to go with its parent")
    assert time.monotonic() - killed < 0.5
    assert etcd34.v3_value(key) is None or str(pid) not in etcd34.v3_value(key)


def test_an_original_helpers_expiring_entry(etcd34, spawn_original, spawn, key):
    original = spawn_original(etcd34, lock_ttl=6, lock_refresh=1)
    assert original.status() == "0"
    original.proc.kill()
    original.wait()
    running_out(etcd34, "v2", key)
    ours = spawn(etcd34, api="v2", **SETTINGS)
    assert ours.status(timeout=10) == "0", ours.stderr()
    assert "missed its refresh" in ours.stderr()
    assert ours.terminate() == 0


def test_slow_writes_do_not_hide_a_dead_holder(etcd_members, spawn, key):
    """A slow write path (a disk stall) makes no arithmetic of ours take a
    dead holder for one that refreshed."""
    etcd = etcd_members("etcd35")
    proxy = DelayProxy(etcd.port)
    proxy.delay, proxy.only = 0.6, b"/kv/txn"
    try:
        dead_holder(etcd, key)
        other = spawn(port=proxy.port, api="v3", **SETTINGS)
        assert other.status(timeout=10) == "0", other.stderr()
        assert "its lock expired" in other.stderr()
    finally:
        proxy.close()


def test_a_failed_try_after_the_wait_says_1_not_3(etcd_members, spawn, key):
    etcd = etcd_members("etcd35")
    proxy = DelayProxy(etcd.port)
    try:
        dead_holder(etcd, key)
        other = spawn(port=proxy.port, api="v3", **SETTINGS)
        waiting(other)
        proxy.delay, proxy.only = 30, b"/lease/grant"  # etcd silent for the next try
        assert other.status(timeout=15) == "1", other.stderr()
        assert other.wait() == 1
    finally:
        proxy.close()


def test_no_wait_at_the_end_of_a_recovery(etcd_members, spawn_under_parent, key, tmp_path):
    """ctdbd's main daemon (its name is ctdbd) runs the end-of-recovery
    check, which wants '1' at once: a '0' there fails the recovery."""
    etcd = etcd_members("etcd35")
    dead_holder(etcd, key)
    parent, pid = spawn_under_parent(contender_config(tmp_path, etcd.port, key),
                                     status=None, comm="ctdbd")
    assert parent.stdout.read(1) == b"1"
    assert etcd.v3_value(key) == "host=gone pnn=1 pid=1 id=00"
    # Its recovery daemon (ctdb_recoverd) runs the elections: there it waits.
    parent, pid = spawn_under_parent(contender_config(tmp_path, etcd.port, key),
                                     status=None, comm="ctdb_recoverd")
    assert parent.stdout.read(1) == b"0"


def test_an_entry_our_earlier_round_left_is_not_adopted(etcd34, spawn, key):
    """Issue 14, item 1.  The contender's first POST goes to a slow path and
    lands late, while the contender waits out a dying holder with a later
    entry of its own given back.  The late entry must not become the lock,
    timed from a later send: cut off from etcd, the contender would then
    believe in it after it expired, and another node would hold as well."""
    slow, fast = DelayProxy(etcd34.port), DelayProxy(etcd34.port)
    try:
        # The POST only (a member that still says which cluster it is in),
        # longer than its share of the deadline.
        slow.delay, slow.only = 4.5, b"POST /v2/keys"
        etcd34.v2("POST", key, value="host=gone pnn=1 pid=1 id=00", ttl=7)
        # Two paths to one member count once towards a majority: the
        # cluster's id vouches, as behind a load balancer.
        settings = dict(api="v2", lock_ttl=9, refresh=2, handover_wait=4,
                        expected_cluster_id=etcd34.cluster_id())
        contender = spawn(host="127.0.0.1:%d, 127.0.0.1:%d" % (slow.port, fast.port),
                          port=None, args=("-vv",), **settings)
        assert contender.status(timeout=20) == "0", contender.stderr()
        assert "waiting up to" in contender.stderr()
        slow.delay = fast.delay = 60  # now cut off from etcd
        slow.only = None
        closed = eof_clock(contender, 20)
        taken, other = next_holder(spawn, 20, etcd=etcd34, **settings)
        wait_for(lambda: closed, 20, "the contender to give the lock up")
        assert closed[0] <= taken, (
            "another helper said '0' %.2fs before the contender's stdout closed; "
            "stderr: %s" % (closed[0] - taken, contender.stderr()))
    finally:
        slow.close()
        fast.close()
