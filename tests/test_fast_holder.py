"""Fast tier: the hold loop (Holder.hold) and the handover (take,
_wait_for_expiry) on a fake clock, with a lock that answers from a script:
when the holder fences, what moves the fence, what it retries and what ends
the hold at once; when a contender waits for an expiring holder, and for how
long."""

import pytest

import ctdb_etcd_lock
from conftest import fast_config
from ctdb_etcd_lock import (AuthError, EtcdError, EtcdLockError, Holder, LockContended,
                            LockLost, Occupant, TransportError, take)

pytestmark = pytest.mark.fast

T0 = 1000.0  # the fake clock's start: the acquire's send
TTL, REFRESH = 9, 2.0
FENCE = T0 + TTL - TTL * ctdb_etcd_lock.FENCE_SHARE  # 1008.1


class ScriptedLock(ctdb_etcd_lock.Lock):
    """A lock whose every call takes the next step of its script: a step is
    a function of (the watch, the call's deadline) that returns or raises;
    a call past the script fails the test."""

    api = "v3"

    def __init__(self, watch, value="host=a pnn=0 pid=1 id=0000000000000001"):
        self.watch = watch
        self.value = value
        self.script = {"acquire": [], "refresh": [], "holding": [], "look_around": []}
        self.calls = []  # (what, time, deadline or value)
        self.values = [value]

    def _step(self, what, deadline):
        self.calls.append((what, self.watch.now, deadline))
        if not self.script[what]:
            pytest.fail("%s at %.2f not expected (calls: %r)" % (what, self.watch.now,
                                                                self.calls))
        return self.script[what].pop(0)(self.watch, deadline)

    def acquire(self, deadline):
        return self._step("acquire", deadline)

    def refresh(self, deadline):
        return self._step("refresh", deadline)

    def holding(self, deadline):
        return self._step("holding", deadline)

    def look_around(self, deadline):
        return self._step("look_around", deadline) if self.script["look_around"] else False

    def release(self, deadline):
        pytest.fail("release is the caller's")

    def next_round(self, value):
        self.calls.append(("next_round", self.watch.now, value))
        self.value = value
        self.values.append(value)

    def times(self, what):
        return [when for name, when, _ in self.calls if name == what]

    def deadlines(self, what):
        return [deadline for name, _, deadline in self.calls if name == what]


def ok(taking=0.0):
    """A refresh (or acquire) that works, answered after ``taking`` seconds."""
    def step(watch, deadline):
        sent, watch.now = watch.now, watch.now + taking
        return sent + TTL
    return step


def timeout(error=TransportError("http://127.0.0.1:2379 did not answer within 2.0s")):
    """No answer: the error comes at the call's deadline."""
    def step(watch, deadline):
        watch.now = deadline
        raise error
    return step


def fails(error):
    """Refused at once."""
    def step(watch, deadline):
        raise error
    return step


def returns(value):
    return lambda watch, deadline: value


@pytest.fixture
def lock(fake_watch, backstop):
    return ScriptedLock(fake_watch)


@pytest.fixture
def config():
    return fast_config(lock_ttl=TTL, refresh=REFRESH, handover_wait=3.0)


def hold(lock, config, fake_log, fake_watch, valid_until=T0 + TTL):
    holder = Holder(lock, config, fake_log, fake_watch, valid_until)
    with pytest.raises(LockLost) as lost:
        holder.hold()
    return holder, lost.value


# ---------------------------------------------------------------------------
# The hold loop

def test_fences_at_valid_until_less_the_margin_when_refreshes_time_out(lock, config,
                                                                      fake_log, fake_watch):
    lock.script["refresh"] = [timeout() for _ in range(10)]
    holder, lost = hold(lock, config, fake_log, fake_watch)
    assert lost.fenced and fake_watch.now == pytest.approx(FENCE)
    assert "no refresh of /_locks/_ctdb/t succeeded for 8.1s (http://127.0.0.1:2379 did " \
        "not answer within 2.0s); the lock could expire on etcd" in str(lost)
    assert lock.times("refresh")[0] == T0 + REFRESH  # counted from the acquire's send
    assert max(lock.deadlines("refresh")) <= FENCE  # no refresh waits past the fence
    assert all(start + seconds <= FENCE + 1e-9 for start, seconds in fake_watch.sleeps)
    assert len(lock.script["refresh"]) == 10 - 3  # 1002 -> 1005.05 -> 1007.05 -> fence


@pytest.mark.parametrize("error", [
    TransportError("no etcd member answered"),
    EtcdError("etcd at x: no leader", status=503),
    AuthError("credentials refused"),  # no word from etcd that the lock is gone
], ids=["transport", "etcd-5xx", "auth"])
def test_failed_refreshes_are_tried_again_every_refresh_until_the_fence(
        lock, config, fake_log, fake_watch, error):
    lock.script["refresh"] = [fails(error) for _ in range(10)]
    _, lost = hold(lock, config, fake_log, fake_watch)
    assert lost.fenced and fake_watch.now == pytest.approx(FENCE)
    assert lock.times("refresh") == [1002, 1004, 1006, 1008]
    assert str(error) in str(lost)
    assert "refresh failed (4 in a row): %s" % error in fake_log.text("info")


def test_a_refresh_that_works_moves_the_fence(lock, config, fake_log, fake_watch, backstop):
    lock.script["refresh"] = [fails(TransportError("lost")), ok(taking=0.3)] + \
        [timeout() for _ in range(10)]
    holder, lost = hold(lock, config, fake_log, fake_watch)
    # The second try, sent at 1004, made the lock valid until 1013.
    assert holder.valid_until == 1004 + TTL
    assert lost.fenced and fake_watch.now == pytest.approx(1004 + TTL - 0.9)
    # The backstop, armed after the refresh: halfway from the fence to the expiry.
    assert backstop == [pytest.approx((1013 - 0.9 + 1013) / 2 - 1004.3)]
    assert "refresh works again after 1 failures" in fake_log.text("info")


def test_refreshes_follow_the_send_of_the_last_one_that_worked(lock, config, fake_log,
                                                               fake_watch):
    # Taken by a request sent at 1000 and answered at 1001: the first
    # refresh is due at 1002, refresh seconds after that send.
    fake_watch.now = T0 + 1
    lock.script["refresh"] = [ok(taking=1.5), ok(taking=0.1),
                              fails(LockLost("key is gone"))]
    hold(lock, config, fake_log, fake_watch)
    assert lock.times("refresh") == [1002, 1004, pytest.approx(1006)]


@pytest.mark.parametrize("error, words", [
    (LockLost("v2 entry x is gone"), "v2 entry x is gone"),
    (ctdb_etcd_lock.ApiNotServed("v3 not served"), "v3 not served"),
    (EtcdLockError("etcd at x belongs to cluster 2"), "belongs to cluster 2"),
])
def test_the_hold_ends_at_once_when_etcd_says_so(lock, config, fake_log, fake_watch, error,
                                                 words):
    lock.script["refresh"] = [fails(error)]
    _, lost = hold(lock, config, fake_log, fake_watch)
    assert not lost.fenced and fake_watch.now == T0 + REFRESH and words in str(lost)


def test_a_bug_in_a_refresh_is_no_failed_refresh(lock, config, fake_log, fake_watch):
    # Item 1 of issue 15: our own KeyError is not retried until the fence.
    lock.script["refresh"] = [fails(KeyError("typo"))]
    holder = Holder(lock, config, fake_log, fake_watch, T0 + TTL)
    with pytest.raises(KeyError):
        holder.hold()
    assert fake_watch.now == T0 + REFRESH


def test_between_refreshes_it_looks_around_twice_and_ends_on_what_it_finds(
        lock, config, fake_log, fake_watch):
    lock.script["refresh"] = [ok(), ok(), ok()]
    asked = []

    def ask(watch, deadline):
        asked.append((watch.now, deadline))
        watch.now += 0.1
        return True
    lock.script["look_around"] = [ask, ask, ask, ask,
                                  fails(EtcdLockError("etcd at y belongs to cluster 2"))]
    _, lost = hold(lock, config, fake_log, fake_watch)
    # Two asks after each refresh, before the next one is due; then the
    # third round's first ask finds a member of another cluster.
    assert [round(now, 2) for now, _ in asked] == [1002, 1002.1, 1004, 1004.1]
    assert [deadline for _, deadline in asked] == [1004, 1004, 1006, 1006]
    assert lock.calls[-1][1:] == (1006, 1008)
    assert not lost.fenced and "belongs to cluster 2" in str(lost)


# ---------------------------------------------------------------------------
# The handover

def occupant(left, ident="their-key", value="host=b pnn=1 pid=2 id=ff"):
    return Occupant(value, left, granted=TTL, ident=ident, rounding=1)


def contended(lock, *args, **kwargs):
    def step(watch, deadline):
        raise LockContended(occupant(*args, **kwargs), lock)
    return step


def take_it(lock, config, fake_log, fake_watch, handover_wait=3.0):
    return take(lock, config, fake_log, fake_watch, handover_wait)


@pytest.mark.parametrize("left, handover_wait", [
    (8, 3.0),  # a live holder: '1' at once
    (6, 3.0),  # missed no refresh (9 - 2 - 1 = 6 left is still live)
    (2, 3.0),  # missed its refresh, but 2 + 1 + 0.5 s is past the budget
    (0, 0.0),  # the end-of-recovery check never waits
])
def test_no_wait_for_a_holder_that_is_live_or_does_not_run_out_in_time(
        lock, config, fake_log, fake_watch, left, handover_wait):
    lock.script["acquire"] = [contended(lock, left)]
    with pytest.raises(LockContended) as raised:
        take_it(lock, config, fake_log, fake_watch, handover_wait)
    assert raised.value.occupant.left == left
    assert fake_watch.now == T0 and fake_watch.sleeps == []


def test_waits_for_a_holder_that_missed_its_refresh_and_takes_the_lock(
        lock, config, fake_log, fake_watch):
    lock.script["acquire"] = [contended(lock, 1), ok()]
    lock.script["holding"] = [returns(occupant(1)), returns(occupant(0)), returns(None)]
    valid_until = take_it(lock, config, fake_log, fake_watch)
    assert fake_watch.now == T0 + 3 * ctdb_etcd_lock.HANDOVER_POLL
    assert valid_until == fake_watch.now + TTL
    assert [seconds for _, seconds in fake_watch.sleeps] == [0.25] * 3
    # Each look is bounded by the end of the wait; each acquire by the lock's life.
    assert lock.deadlines("holding") == [T0 + 3] * 3
    assert lock.deadlines("acquire") == [T0 + 8.1, fake_watch.now + 8.1]
    # A new value for the new try, the same holder otherwise.
    assert [name for name, _, _ in lock.calls][-2:] == ["next_round", "acquire"]
    first, second = lock.values
    assert second != first and second.rpartition(" id=")[0] == first.rpartition(" id=")[0]
    assert "its lock expired" in fake_log.text("info")


def test_returns_when_another_took_the_lock_and_then_says_who(lock, config, fake_log,
                                                              fake_watch):
    lock.script["acquire"] = [contended(lock, 1), contended(lock, 8, "new", "host=c")]
    lock.script["holding"] = [returns(occupant(8, "new", "host=c"))]
    with pytest.raises(LockContended) as raised:
        take_it(lock, config, fake_log, fake_watch)
    assert raised.value.occupant.value == "host=c"
    assert fake_watch.now == T0 + 0.25 and "went to host=c" in fake_log.text("info")


def test_a_holder_that_refreshes_after_all_keeps_the_lock(lock, config, fake_log,
                                                          fake_watch):
    lock.script["acquire"] = [contended(lock, 1)]
    # 6 s left is as little as a live holder has (9 - 2 - 1): it refreshed.
    lock.script["holding"] = [returns(occupant(1)), returns(occupant(6))]
    with pytest.raises(LockContended) as raised:
        take_it(lock, config, fake_log, fake_watch)
    assert raised.value.occupant.left == 6 and fake_watch.now == T0 + 0.5
    assert "it refreshed" in fake_log.text("info")


def test_gives_up_at_the_end_of_the_wait(lock, config, fake_log, fake_watch):
    lock.script["acquire"] = [contended(lock, 1)]
    lock.script["holding"] = [returns(occupant(1))] * 11  # etcd's whole seconds stand still
    with pytest.raises(LockContended):
        take_it(lock, config, fake_log, fake_watch, handover_wait=2.9)
    assert fake_watch.now == pytest.approx(T0 + 2.9)  # handover_wait, not a moment more
    assert fake_watch.sleeps[-1][1] == pytest.approx(0.15)
    assert "waited 2.9 s for host=b pnn=1 pid=2 id=ff; still held" in fake_log.text("info")


def test_errors_while_waiting_end_in_contention_never_in_an_error(lock, config, fake_log,
                                                                  fake_watch):
    lock.script["acquire"] = [contended(lock, 1), fails(TransportError("no member"))]
    lock.script["holding"] = [fails(TransportError("no member")), returns(None)]
    with pytest.raises(LockContended) as raised:
        take_it(lock, config, fake_log, fake_watch)
    assert raised.value.occupant.value == "host=b pnn=1 pid=2 id=ff"  # '1', not '3'


def test_an_error_before_any_contention_is_that_error(lock, config, fake_log, fake_watch):
    lock.script["acquire"] = [fails(TransportError("no member"))]
    with pytest.raises(TransportError):
        take_it(lock, config, fake_log, fake_watch)
