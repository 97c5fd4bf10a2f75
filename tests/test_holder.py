"""The holder's life, the same for every API on every etcd flavour:
take, contend, hold past the TTL, release, parent gone, lock lost, fencing."""

import os
import signal
import time

import pytest

import ctdb_etcd_lock
from conftest import (HELPER, SYSTEM_PYTHON, alive, delete_held, held_apis, replace_held,
                      the_case_member)
from etcdmember import free_port, wait_for

etcd = pytest.fixture(name="etcd")(the_case_member)


def test_take_and_contend(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, args=())
    assert holder.status() == "0"
    for where in held_apis(api, etcd):
        value = etcd.value(where, key)
        assert value and "pid=%d" % holder.proc.pid in value
    other = spawn(etcd, api=api, args=())
    assert other.status() == "1"
    assert other.wait() == 1
    assert other.rest_of_stdout() == b""
    assert other.stderr() == ""  # contention is silent
    assert holder.running()
    assert holder.terminate() == 0
    assert holder.rest_of_stdout() == b""
    assert holder.stderr() == ""  # and so is a good run


def test_holds_past_the_ttl(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, lock_ttl=2, refresh=0.5)
    assert holder.status() == "0"
    first = {where: etcd.value(where, key) for where in held_apis(api, etcd)}
    end = time.monotonic() + 4  # twice the TTL
    while time.monotonic() < end:
        time.sleep(0.25)
        assert holder.running(), holder.stderr()
        assert {where: etcd.value(where, key) for where in held_apis(api, etcd)} == first
    assert spawn(etcd, api=api).status() == "1"
    holder.terminate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_releases(etcd, api, spawn, key, signum):
    holder = spawn(etcd, api=api, args=())
    assert holder.status() == "0"
    leases = etcd.leases()
    holder.proc.send_signal(signum)
    assert holder.wait() == 0
    assert holder.stderr() == ""
    for where in held_apis(api, etcd):
        assert etcd.value(where, key) is None, where
    if "v3" in held_apis(api, etcd):
        assert len(etcd.leases()) == len(leases) - 1  # our lease was revoked
    again = spawn(etcd, api=api)
    assert again.status() == "0"
    again.terminate()


def test_each_acquisition_has_its_own_value(etcd, api, spawn, key):
    values = []
    for _ in range(2):
        holder = spawn(etcd, api=api)
        assert holder.status() == "0"
        values.append(etcd.value(held_apis(api, etcd)[0], key))
        holder.terminate()
    assert values[0] != values[1]


# Python 3.6 to 3.8 have no pidfd: there the helper polls its parent.
NO_PIDFD = ("import os, runpy, sys; del os.pidfd_open; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("watch", ["pidfd", "poll"])
def test_parent_gone_releases_within_half_a_second(etcd, api, key, tmp_path, watch,
                                                   spawn_under_parent):
    helper = [HELPER] if watch == "pidfd" else [SYSTEM_PYTHON, "-c", NO_PIDFD, HELPER]
    config = tmp_path / "parent.conf"
    config.write_text("port = %d\nlock_ttl = 3\nrefresh = 0.5\napi = %s\nlock_name = %s\n"
                      % (etcd.port, api, key.rsplit("/", 1)[1]))
    parent, helper_pid = spawn_under_parent(config, helper)
    parent.kill()
    parent.wait()
    killed = time.monotonic()
    wait_for(lambda: all(etcd.value(where, key) is None
                         for where in held_apis(api, etcd)), 2, "the key to be released")
    released = time.monotonic() - killed
    wait_for(lambda: not alive(helper_pid), 2, "the helper to exit")
    assert released < 0.5 + 0.2, released  # 0.2 s for this test's own polling


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_lock_no_longer_ours_exits_within_a_refresh(etcd, api, spawn, key, change):
    holder = spawn(etcd, api=api, args=(), refresh=0.5)
    assert holder.status() == "0"
    where = held_apis(api, etcd)[-1]
    (delete_held if change == "deleted" else replace_held)(etcd, where, key)
    changed = time.monotonic()
    holder.wait(timeout=3)
    assert time.monotonic() - changed < 0.5 + 0.5  # one refresh interval, plus slack
    lines = holder.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ctdb_etcd_lock: lock lost - "), lines
    # Not re-created, and someone else's value left alone.
    expected = None if change == "deleted" else "someone else"
    assert etcd.value(where, key) == expected
    assert holder.rest_of_stdout() == b""
    if change == "replaced":
        delete_held(etcd, where, key)


def test_lock_expired_while_helper_stopped(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, args=(), lock_ttl=2, refresh=0.5)
    assert holder.status() == "0"
    holder.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: all(etcd.value(where, key) is None for where in held_apis(api, etcd)),
             10, "the lock to expire on etcd")
    holder.proc.send_signal(signal.SIGCONT)
    holder.wait(timeout=3)
    lines = holder.stderr_lines()
    assert len(lines) == 1 and "lock lost" in lines[0], lines
    for where in held_apis(api, etcd):
        assert etcd.value(where, key) is None  # not re-created


def test_etcd_paused_self_fences_before_the_ttl(own_etcd, spawn, key):
    # read_timeout 60 must not matter: every wait is cut to the lock's deadline.
    etcd = own_etcd
    holder = spawn(etcd, api="auto", args=(), lock_ttl=3, refresh=0.5, read_timeout=60)
    assert holder.status() == "0"
    time.sleep(0.6)  # let one refresh pass, so the pause lands mid-hold
    etcd.pause()
    paused = time.monotonic()
    try:
        # The last good refresh was sent before the pause: the helper must
        # be gone before pause + lock_ttl.
        holder.wait(timeout=3)
        gone = time.monotonic() - paused
    finally:
        etcd.resume()
    assert gone < 3, gone
    lines = holder.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ctdb_etcd_lock: lock lost - "), lines


def test_refresh_survives_a_short_etcd_pause(own_etcd, spawn, key):
    etcd = own_etcd
    holder = spawn(etcd, api="auto", args=(), lock_ttl=4, refresh=0.5)
    assert holder.status() == "0"
    etcd.pause()
    time.sleep(1.2)  # shorter than the fence (3.6 s after the last refresh)
    etcd.resume()
    time.sleep(1.5)
    assert holder.running(), holder.stderr()
    assert holder.terminate() == 0
    assert holder.stderr() == ""


def test_etcd_unreachable_is_an_error_naming_the_endpoint(spawn):
    port = free_port()
    helper = spawn(port=port, lock_name="x", args=())
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert "127.0.0.1:%d" % port in lines[0] and "refused" in lines[0]


def test_etcd_stopped_then_back(own_etcd, spawn, key):
    etcd = own_etcd
    holder = spawn(etcd, api="auto", args=())
    assert holder.status() == "0"
    etcd.stop()
    holder.wait(timeout=5)
    assert "lock lost" in holder.stderr()
    etcd.start()  # same data dir: the lease or TTL may still be running
    wait_for(lambda: spawn(etcd, api="auto").status() == "0", 15, "the lock to be free again")


def _sockets(pid):
    links = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            links.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except FileNotFoundError:
            pass
    return sorted(link for link in links if link.startswith("socket:"))


def test_one_connection_kept_while_holding(etcd, api, spawn, key):
    holder = spawn(etcd, api=api, args=("-vv",), refresh=0.5)
    assert holder.status() == "0"
    sockets = _sockets(holder.proc.pid)

    def requests_since_taken():
        log = holder.stderr().split(" took lock ", 1)
        return len(log) == 2 and log[1].count(" http://")
    wait_for(lambda: requests_since_taken() >= 4, 5, "a few refreshes")
    assert len(sockets) == 1 and _sockets(holder.proc.pid) == sockets
    holder.terminate()


def test_value_reads_the_same_in_both_apis(etcd34, spawn, key):
    holder = spawn(etcd34, api="auto")
    assert holder.status() == "0"
    assert etcd34.v2_value(key) == etcd34.v3_value(key)
    holder.terminate()


@pytest.mark.fast
def test_never_waits_for_pid_1():
    # ctdb's cluster_mutex_helper.txt: "a helper should never wait for parent process ID 1".
    watch = ctdb_etcd_lock.Watch(1)
    assert not watch.armed and not watch.gone()
    # A parent that is PID 1 at start died before we did (PID 1 here is no ctdbd).
    assert watch.orphan


def test_sigterm_right_after_contention_is_quiet(etcd, api, spawn):
    # ctdbd sends SIGTERM the moment it reads '1' (every end-of-recovery check).
    holder = spawn(etcd, api=api)
    assert holder.status() == "0"
    for _ in range(8):
        other = spawn(etcd, api=api, args=())
        assert other.status() == "1"
        other.proc.send_signal(signal.SIGTERM)
        other.wait()
        assert other.stderr() == ""
    holder.terminate()


def test_nobody_reading_the_status_releases(etcd, api, spawn, key):
    # ctdbd gone before the lock was taken: the '0' cannot be written.
    holder = spawn(etcd, api=api, args=())
    holder.proc.stdout.close()
    holder.wait()
    assert holder.stderr() == ""
    for where in held_apis(api, etcd):
        assert etcd.value(where, key) is None


def test_parent_gone_while_etcd_is_silent(own_etcd, tmp_path, key, spawn_under_parent):
    # A refresh in flight to a paused etcd must not hide the parent's end.
    etcd = own_etcd
    config = tmp_path / "parent.conf"
    config.write_text("port = %d\nlock_ttl = 6\nrefresh = 0.5\nlock_name = %s\n"
                      % (etcd.port, key.rsplit("/", 1)[1]))
    parent, helper_pid = spawn_under_parent(config, helper_argv=[HELPER, "-vv"])
    os.set_blocking(parent.stderr.fileno(), False)  # the helper's stderr is its parent's
    while parent.stderr.read():
        pass  # what it said before the pause
    etcd.pause()
    try:
        said = b""

        def refreshing():  # a refresh is now waiting on etcd
            nonlocal said
            said += parent.stderr.read() or b""
            return b"/lease/keepalive" in said
        wait_for(refreshing, 3, "a refresh sent to the paused etcd")
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        wait_for(lambda: not alive(helper_pid), 3, "the helper to exit")
        assert time.monotonic() - killed < 0.5 + 0.2
    finally:
        etcd.resume()


# ---------------------------------------------------------------------------
# A suspend (a laptop's, a VM paused by its hypervisor): the time it takes
# counts, so the first wakeup after a resume fences.

class SuspendingWatch:
    """Its first sleep is a suspend of an hour: CLOCK_BOOTTIME goes on,
    CLOCK_MONOTONIC stands still, as Linux does it."""

    def __init__(self):
        self.suspended = 0.0
        self.sleeps = 0
        self.clock = ctdb_etcd_lock.clock

    def sleep(self, seconds):
        self.sleeps += 1
        if self.sleeps == 1:
            self.suspended += 3600


class UnreachableLock:
    """etcd out of reach on resume; a refresh after the resume is the bug."""

    api = "v3"

    def refresh(self, deadline):
        raise AssertionError("refreshed after a resume an hour past the lock's expiry, "
                             "instead of fencing")


@pytest.mark.fast
@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="no CLOCK_BOOTTIME here")
def test_first_wakeup_after_a_suspend_fences(monkeypatch):
    watch = SuspendingWatch()
    real = time.clock_gettime

    def boottime(clock_id):
        if clock_id == time.CLOCK_BOOTTIME:
            return time.monotonic() + watch.suspended
        return real(clock_id)
    monkeypatch.setattr(time, "clock_gettime", boottime)
    config = ctdb_etcd_lock.Config({"lock_name": "suspend"})
    # Just taken: valid for lock_ttl from now (both clocks agree until the suspend).
    holder = ctdb_etcd_lock.Holder(UnreachableLock(), config, ctdb_etcd_lock.Log(0), watch,
                                   time.monotonic() + config.lock_ttl)
    with pytest.raises(ctdb_etcd_lock.LockLost) as lost:
        holder.hold()
    assert lost.value.fenced and watch.sleeps == 1
    assert "no refresh of /_locks/_ctdb/suspend succeeded for 36" in str(lost.value)
