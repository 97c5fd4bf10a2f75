"""Fast tier: the ways out.  EXITS maps each exception to an exit code and
the status byte ctdbd reads, said before the lock goes back ('3') or after
('1'), or not at all (stdout closes); and run(), driven in process with a
scripted transport on a fake clock: take, hold, give back."""

import base64

import pytest

import ctdb_etcd_lock
from conftest import fast_config
from ctdb_etcd_lock import (ApiNotServed, AuthError, ConfigError, EtcdError, Life,
                            LockContended, LockLost, Occupant, ParentGone, Terminated,
                            TransportError)

pytestmark = pytest.mark.fast


class Events(list):
    """What happened on the way out, in order."""


class FakeStatus:
    """StatusPipe: one status byte, once; close()."""

    is_pipe = True

    def __init__(self, events):
        self.events = events
        self.written = None
        self.fd = 1

    def write(self, status):
        if self.written is None:
            self.written = status
            self.events.append(("status", status))

    def close(self):
        if self.fd is not None:
            self.fd = None
            self.events.append(("close",))


class ReleasingLock:
    """A lock whose release() is noted (with its deadline), or fails."""

    def __init__(self, watch, events, error=None):
        self.events = events
        self.error = error
        self.transport = self
        self.clock = watch.clock

    def release(self, deadline):
        self.events.append(("release", deadline - self.clock()))
        if self.error:
            raise self.error

    def close(self):
        self.events.append(("transport closed",))


class Held:
    valid_until = 1000.0 + 9


def leave(error, fake_watch, fake_log, held=False, release_error=None):
    events = Events()
    life = Life()
    life.config = fast_config()
    life.lock = ReleasingLock(fake_watch, events, release_error)
    if held:
        life.holder = Held()
    status = FakeStatus(events)
    if held:
        status.written = ctdb_etcd_lock.STATUS_HELD  # '0' was said
    code = ctdb_etcd_lock._leave(error, life, fake_log, status, fake_watch)
    assert fake_watch.leaving  # nothing interrupts the way out
    return code, [event[0] if event[0] != "status" else event[1] for event in events]


@pytest.mark.parametrize("error, code, events, line", [
    (ConfigError("bad port"), 3, [b"3", "release", "transport closed"],
     ("error", "config error - bad port")),
    (LockContended(Occupant("host=b", left=4)), 1, ["release", "transport closed", b"1"],
     ("info", "lock /_locks/_ctdb/t is held by host=b (4 s left)")),
    (LockContended(Occupant("host=b")), 1, ["release", "transport closed", b"1"],
     ("info", "lock /_locks/_ctdb/t is held by host=b")),
    (LockLost("key is gone"), 1, ["close", "release", "transport closed"],
     ("error", "lock lost - key is gone")),
    (TransportError("no member answered"), 3, [b"3", "release", "transport closed"],
     ("error", "cannot take lock /_locks/_ctdb/t - no member answered")),
    (AuthError("refused"), 3, [b"3", "release", "transport closed"],
     ("error", "cannot take lock /_locks/_ctdb/t - refused")),
    (ApiNotServed("no v3"), 3, [b"3", "release", "transport closed"],
     ("error", "cannot take lock /_locks/_ctdb/t - no v3")),
    (EtcdError("no leader", status=503), 3, [b"3", "release", "transport closed"],
     ("error", "cannot take lock /_locks/_ctdb/t - no leader")),
    (Terminated(15), 0, ["close", "release", "transport closed"], None),
    (ParentGone("parent gone"), 0, ["close", "release", "transport closed"],
     ("info", "parent gone; not taking the lock")),
    (KeyError("typo"), 3, [b"3", "release", "transport closed"],
     ("error", "internal error - KeyError: 'typo'; please report it")),
    (AssertionError("the hold ended without a reason"), 3,
     [b"3", "release", "transport closed"],
     ("error", "internal error - AssertionError: the hold ended without a reason; please "
               "report it")),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None)
def test_each_way_out_before_the_lock_was_held(error, code, events, line, fake_watch,
                                               fake_log, backstop):
    assert leave(error, fake_watch, fake_log) == (code, events)
    assert fake_log.lines == ([line] if line else [])


@pytest.mark.parametrize("error, code, line", [
    (LockLost("no refresh succeeded", fenced=True), 1,
     ("error", "lock lost - no refresh succeeded")),
    (Terminated(15), 0, ("info", "releasing lock /_locks/_ctdb/t: terminated by SIGTERM")),
    (Terminated(10), 0, ("info", "releasing lock /_locks/_ctdb/t: terminated by SIGUSR1")),
    (ParentGone("nobody reads stdout"), 0,
     ("info", "releasing lock /_locks/_ctdb/t: nobody reads stdout")),
    (KeyError("typo"), 3, ("error", "internal error - KeyError: 'typo'; please report it")),
])
def test_once_held_stdout_closes_before_the_lock_goes_back(error, code, line, fake_watch,
                                                            fake_log, backstop):
    assert leave(error, fake_watch, fake_log, held=True) == (
        code, ["close", "release", "transport closed"])
    assert fake_log.lines == [line]


@pytest.mark.parametrize("error, seconds", [
    (ConfigError("x"), 1), (LockContended(Occupant("b")), 1), (LockLost("x"), 1),
    (Terminated(15), 2), (ParentGone("x"), 0.4), (ValueError("bug"), 1),
])
def test_the_release_gets_the_seconds_of_its_way_out(error, seconds, fake_watch, fake_log,
                                                     backstop):
    events = Events()
    life = Life()
    life.lock = ReleasingLock(fake_watch, events)
    ctdb_etcd_lock._leave(error, life, fake_log, FakeStatus(events), fake_watch)
    assert ("release", pytest.approx(seconds)) in events
    assert backstop == [pytest.approx(seconds + 1)]  # the backstop guards the release too


def test_held_release_never_outlives_the_lock(fake_watch, fake_log, backstop):
    fake_watch.now = 1008.5  # past the fence (1008.1), half a second before expiry
    events = Events()
    life = Life()
    life.config, life.holder = fast_config(), Held()
    life.lock = ReleasingLock(fake_watch, events)
    ctdb_etcd_lock._leave(Terminated(15), life, fake_log, FakeStatus(events), fake_watch)
    assert ("release", pytest.approx(0.25)) in events  # half of what is left
    assert backstop == [pytest.approx(0.45)]  # 0.9 of it


def test_a_failed_release_is_said_only_when_ctdbd_asked_a_holder_to_go(fake_watch, fake_log,
                                                                       backstop):
    failure = TransportError("no member answered")
    leave(Terminated(15), fake_watch, fake_log, held=True, release_error=failure)
    assert ("error", "could not release lock - no member answered; it expires by its TTL") \
        in fake_log.lines
    for error in (LockLost("x"), ConfigError("x")):
        log = type(fake_log)()
        leave(error, fake_watch, log, held=isinstance(error, LockLost), release_error=failure)
        assert ("info", "could not release lock - no member answered; it expires by its "
                        "TTL") in log.lines


def test_every_row_of_exits_is_reached_by_its_own_kind():
    # First match first: no row hides a later one.
    kinds = [row[0] for row in ctdb_etcd_lock.EXITS]
    for index, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:index]), kind
    assert kinds[-1] is Exception and {Terminated, ParentGone} <= set(kinds)


# ---------------------------------------------------------------------------
# run(), in process

OURS = "host=a pnn=0 pid=1 id=0000000000000001"
LEASE = "4328981870989014278"
HEADER = {"cluster_id": "2856622976426568043", "member_id": "1", "revision": "20"}


def b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def run(tmp_path, monkeypatch, scripted, fake_watch, fake_log, backstop):
    """run(config text) -> (exit code, events, transport): run() with this
    config, our value OURS, and a scripted transport (``expect`` it before)."""
    transport = scripted()
    monkeypatch.setattr(ctdb_etcd_lock, "our_value", lambda watch: OURS)
    monkeypatch.setattr(ctdb_etcd_lock, "Transport", lambda config, log, watch: transport)
    events = Events()
    status = FakeStatus(events)

    def go(text):
        path = tmp_path / "etcd"
        path.write_text(text)
        code = ctdb_etcd_lock.run(["-c", str(path)], fake_log, status, fake_watch)
        return code, events
    go.transport = transport
    go.status = status
    return go


CONFIG = "lock_name = t\napi = v3\nlock_ttl = 9\nrefresh = 2\n"


def test_run_takes_holds_and_gives_back_a_lost_lock(run, fake_log):
    transport = run.transport
    transport.expect("POST", "/v3/lease/grant", (200, {"header": HEADER, "ID": LEASE,
                                                       "TTL": "9"}))
    transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "succeeded": True}))

    def expired(call):  # by now '0' was said, and nothing closed yet
        assert run.status.events == [("status", b"0")]
        return 200, {"result": {"header": HEADER}}  # no TTL: the lease is gone
    transport.expect("POST", "/v3/lease/keepalive", expired)
    transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "succeeded": False}))
    transport.expect("POST", "/v3/lease/revoke", (200, {"header": HEADER}))
    code, events = run(CONFIG)
    assert code == 1 and events == [("status", b"0"), ("close",)]
    assert transport.calls[2].sent == 1002  # the first refresh, refresh after the grant
    assert transport.calls[-1].behind and transport.closed
    assert transport.confirmed_until == 1000 + 4  # CONFIRM_WAIT, well before the fence
    assert fake_log.lines[-2:] == [
        ("error", "lock lost - lease %s of key /_locks/_ctdb/t expired or was revoked" % LEASE),
        ("info", "v3 key /_locks/_ctdb/t was no longer ours; left it alone")]


def test_run_contended_says_1_after_its_lease_went_back(run, fake_log):
    transport = run.transport
    transport.expect("POST", "/v3/lease/grant", (200, {"header": HEADER, "ID": LEASE,
                                                       "TTL": "9"}))
    transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "responses": [
        {"response_range": {"kvs": [{"value": b64("host=b"), "create_revision": "3",
                                     "lease": "77"}]}}]}))
    transport.expect("POST", "/v3/lease/timetolive", (200, {"TTL": "8", "grantedTTL": "9"}))

    def revoked(call):
        assert run.status.events == []  # no '1' before our lease is gone
        return 200, {"header": HEADER}
    transport.expect("POST", "/v3/lease/revoke", revoked)
    code, events = run(CONFIG)
    assert code == 1 and events == [("status", b"1")]
    assert fake_log.lines == [("info", "lock /_locks/_ctdb/t is held by host=b (8 s left)")]


def test_run_with_a_bad_config_asks_nobody(run):
    code, events = run("lock_ttl = 1\n")
    assert code == 3 and events == [("status", b"3")] and run.transport.calls == []


def test_run_confirmed_too_late_gives_the_lock_back_with_3(run, fake_watch, fake_log):
    transport = run.transport
    transport.expect("POST", "/v3/lease/grant", (200, {"header": HEADER, "ID": LEASE,
                                                       "TTL": "9"}))
    transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "succeeded": True}))
    transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "succeeded": True}))
    transport.expect("POST", "/v3/lease/revoke", (200, {"header": HEADER}))

    def slow_confirm(deadline):
        fake_watch.now = 1000 + 8.1  # the fence came while members were asked
    transport.confirm_cluster = slow_confirm
    code, events = run(CONFIG)
    assert code == 3 and events == [("status", b"3")]
    assert fake_log.lines[0] == ("error", "cannot take lock /_locks/_ctdb/t - etcd answered "
                                          "too late to trust the lock")


def test_run_a_bug_is_an_internal_error_and_the_lock_goes_back(run, fake_log):
    transport = run.transport
    transport.expect("POST", "/v3/lease/grant", (200, {"header": HEADER, "ID": LEASE,
                                                       "TTL": "9"}))

    def bug(call):
        raise KeyError("our own typo")
    transport.expect("POST", "/v3/kv/txn", bug)
    transport.expect("POST", "/v3/lease/revoke", (200, {"header": HEADER}))
    code, events = run(CONFIG)
    assert code == 3 and events == [("status", b"3")]
    assert fake_log.lines[0] == ("error", "internal error - KeyError: 'our own typo'; please "
                                          "report it")


def test_run_orphan_takes_nothing(run, fake_watch, fake_log):
    fake_watch.orphan = True
    code, events = run(CONFIG)
    assert code == 0 and events == [("close",)] and run.transport.calls == []
    assert fake_log.lines == [("info", "parent gone before we started; not taking the lock")]
