"""The handover: a contender that finds the holder's lock running out (the
holder missed its refreshes) waits for it to expire and takes it, within
handover_wait; a healthy holder still means '1' at once."""

import os
import select
import signal
import time

import pytest

from conftest import HELPER, alive
from etcdmember import wait_for

# A live holder has at least lock_ttl - refresh (4 s) left; one that stops
# refreshing is "running out" below lock_ttl - refresh - 1.
SETTINGS = {"lock_ttl": 6, "refresh": 1, "handover_wait": 3}


@pytest.fixture
def etcd(case_etcd):
    return case_etcd


def where(api):
    """The keyspace a contender meets the holder in first (v3 before v2)."""
    return "v2" if api == "v2" else "v3"


def running_out(etcd, api, key, seconds=2):
    """Wait until the holder's lock has at most ``seconds`` left."""
    wait_for(lambda: (etcd.left(where(api), key) or 99) <= seconds, 15,
             "the holder's lock to run down to %d s" % seconds)


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
    holder = spawn(etcd, api=api, **SETTINGS)
    assert holder.status() == "0"
    holder.proc.kill()
    holder.wait()
    running_out(etcd, api, key, seconds=1)
    other = spawn(etcd, api=api, args=("-vv",), **SETTINGS)
    asked = time.monotonic()
    assert other.status(timeout=10) == "0", other.stderr()
    took = time.monotonic() - asked
    assert took < SETTINGS["handover_wait"] + 2, took
    log = other.stderr()
    assert "missed its refresh" in log and "its lock expired" in log, log
    assert "pid=%d" % other.proc.pid in etcd.value(where(api), key)
    assert other.terminate() == 0


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


def test_sigterm_during_the_wait_leaves_nothing_behind(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, **SETTINGS)
    assert holder.status() == "0"
    holder.proc.kill()
    holder.wait()
    running_out(etcd, api, key)
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
    holder = spawn(etcd34, api="v3", **SETTINGS)
    assert holder.status() == "0"
    holder.proc.kill()
    holder.wait()
    running_out(etcd34, "v3", key)
    config = tmp_path / "contender"
    config.write_text("".join("%s = %s\n" % item for item in dict(
        SETTINGS, port=etcd34.port, api="v3", lock_name=key.rsplit("/", 1)[1]).items()))
    parent, pid = spawn_under_parent(config, helper_argv=[HELPER, "-v"], status=None)
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
    running_out(etcd34, "v2", key, seconds=1)
    ours = spawn(etcd34, api="v2", **SETTINGS)
    assert ours.status(timeout=10) == "0", ours.stderr()
    assert "missed its refresh" in ours.stderr()
    assert ours.terminate() == 0
