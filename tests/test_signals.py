"""Hardening: signals at any instant, a log pipe that never drains, parents that go, stdout that goes.

ctdbd gives the helper a stdout pipe and a stderr pipe that goes to its log.
Neither end is ours to trust: the log may stop draining, the reader of
stdout may go, ctdbd itself may go (even before the helper starts), and
SIGTERM may come at any instant, also while `testparm` runs.  Whatever
happens, the helper ends promptly, never with a traceback, and leaves
nothing of its own in etcd.

Long sweeps are marked `soak` and run only when asked for (`-m soak`); a
short version of each is part of the default run.
"""

import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (HELPER, SYSTEM_PYTHON, alive, delete_held, held_apis, helper_env,
                      kill_if_ours, own_testparm, read_text, replace_held, write_config)
from etcdmember import wait_for

LOCK_TTL = 2
REFRESH = 0.5


# ---------------------------------------------------------------------------
# Looking at etcd and at processes

def nothing_held(etcd, key):
    """No v3 key, and (where v2 is served) no entry in the v2 queue."""
    if etcd.v3_value(key) is not None:
        return False
    return not (etcd.serves_v2 and etcd.v2_entries(key))


def what_is_held(etcd, key):
    """For messages: what etcd holds of the lock."""
    held = {"v3": etcd.v3_value(key)}
    if etcd.serves_v2:
        held["v2"] = [entry.get("value") for entry in etcd.v2_entries(key)]
    return held


def read_pidfile(path, timeout, what):
    return int(wait_for(lambda: read_text(path), timeout, what))


def _gone_by(deadline, pids, what):
    wait_for(lambda: not any(alive(pid) for pid in pids),
             max(deadline - time.monotonic(), 0.01), what)


def no_traceback(text):
    return "Traceback" not in text and "Exception ignored" not in text


# ---------------------------------------------------------------------------
# Helpers with the stdio a test chooses, short-lived locks

@pytest.fixture
def launch(spawn):
    """spawn() with lock_ttl LOCK_TTL and refresh REFRESH unless given."""
    def start(etcd=None, **kwargs):
        kwargs.setdefault("lock_ttl", LOCK_TTL)
        kwargs.setdefault("refresh", REFRESH)
        return spawn(etcd, **kwargs)
    return start


@pytest.fixture
def member(flavour, etcd_members):
    """The shared etcd member of the flavour a test is parametrized with."""
    return etcd_members(flavour)


def assert_holds(child, etcd, api, key, seconds, contend=None):
    """The helper keeps its lock for ``seconds``: running, its value unchanged
    in every keyspace it holds; ``contend()``, if given, runs meanwhile."""
    values = {where: etcd.value(where, key) for where in held_apis(api, etcd)}
    assert all(values.values()), values
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        if contend:
            contend()
        else:
            time.sleep(0.1)
        assert child.running(), "the holder exited; stderr: %s" % child.stderr()
        assert {where: etcd.value(where, key) for where in values} == values
        rounds += 1
    return rounds


# ---------------------------------------------------------------------------
# 1. stderr: a pipe that nobody drains

class FullPipe:
    """A pipe filled to the brim with NUL bytes; its read end is never read
    (unless a test drains it), its write end is the helper's stderr."""

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        for size in (4096, 1):
            while True:
                try:
                    os.write(self.w, b"\0" * size)
                except BlockingIOError:
                    break
        # ctdbd's log pipe blocks: so must the helper's end of ours.
        os.set_blocking(self.w, True)

    def close_write(self):
        """After the spawn: the helper holds the only write end."""
        if self.w is not None:
            os.close(self.w)
            self.w = None

    def drain(self, until_eof=False, timeout=2.0):
        """Read what is there (or everything up to EOF); the filler left out."""
        os.set_blocking(self.r, False)
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = os.read(self.r, 65536)
            except BlockingIOError:
                if not until_eof:
                    break
                left = deadline - time.monotonic()
                assert left > 0, "stderr not closed within %ss: %r" % (timeout, data)
                select.select([self.r], [], [], left)
                continue
            if not chunk:
                break
            data += chunk
        return data.replace(b"\0", b"")

    def close(self):
        self.close_write()
        os.close(self.r)


@pytest.fixture
def full_pipe():
    pipe = FullPipe()
    yield pipe
    pipe.close()


STDERR_CASES = [("etcd34", "v2"), ("etcd35", "v3")]
VERBOSITY = pytest.mark.parametrize("args", [("-v",), ()], ids=["-v", "quiet"])


@VERBOSITY
@pytest.mark.parametrize("flavour,api", STDERR_CASES)
def test_full_stderr_still_holds_and_releases(member, api, args, launch, spawn, key,
                                              full_pipe):
    holder = launch(member, api=api, args=args, stderr=full_pipe.w)
    full_pipe.close_write()
    assert holder.status() == "0"

    def contend():
        other = spawn(member, api=api, args=(), lock_ttl=LOCK_TTL, refresh=REFRESH)
        assert other.status() == "1", other.stderr()
        other.wait()
        other.close()
    # Over twice the TTL: only refreshes can have kept the lock ours.
    assert assert_holds(holder, member, api, key, 2 * LOCK_TTL + 0.3, contend) >= 3
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.wait(1) == 0
    assert nothing_held(member, key), what_is_held(member, key)


@pytest.mark.parametrize("change", ["deleted", "replaced"])
@VERBOSITY
@pytest.mark.parametrize("flavour,api", STDERR_CASES)
def test_full_stderr_lock_lost_still_exits(member, api, args, change, launch, key,
                                           full_pipe):
    holder = launch(member, api=api, args=args, stderr=full_pipe.w, lock_ttl=3)
    full_pipe.close_write()
    assert holder.status() == "0"
    (delete_held if change == "deleted" else replace_held)(member, api, key)
    try:
        assert holder.eof(2), "stdout still open 2s after the lock was lost"
        holder.wait(1)
        assert holder.after_status == b""
        # Neither re-created nor someone else's touched.
        expected = None if change == "deleted" else "someone else"
        assert member.value(api, key) == expected
    finally:
        if change == "replaced":
            delete_held(member, api, key)


def test_full_stderr_drained_later_says_lines_were_dropped(etcd34, launch, key, full_pipe):
    holder = launch(etcd34, api="auto", args=("-vv",), stderr=full_pipe.w)
    full_pipe.close_write()
    assert holder.status() == "0"
    # -vv logs every request: let a few refreshes' lines find the pipe full.
    time.sleep(4 * REFRESH)
    assert holder.running()
    text = full_pipe.drain()
    holder.proc.send_signal(signal.SIGTERM)  # and -v logs the release
    assert holder.wait(1) == 0
    text += full_pipe.drain(until_eof=True)
    assert b"dropped" in text, text
    assert no_traceback(text.decode("utf-8", "replace")), text
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


# ---------------------------------------------------------------------------
# 2a. SIGTERM at a random instant of start-up

@pytest.fixture
def marking_testparm(tmp_path, stubs):
    """PATH with a testparm that leaves $STUB_TESTPARM_MARK behind when it runs."""
    return own_testparm(tmp_path, stubs, "marking-bin",
                        ': > "$STUB_TESTPARM_MARK"\necho "$STUB_NETBIOS_NAME"\n')


def sigterm_at_random_instants(etcd, launch, path, tmp_path, lock_name, key, runs, seed):
    """SIGTERM each of ``runs`` helpers 0-150 ms after its spawn."""
    rng = random.Random(seed)
    leases = set(etcd.leases())
    outcomes = {}
    for run in range(runs):
        delay = rng.uniform(0, 0.150)
        what = "run %d (seed %d, SIGTERM after %.1f ms)" % (run, seed, delay * 1000)
        mark = str(tmp_path / ("testparm-ran-%d" % run))
        # No lock_name: testparm names the lock.
        child = launch(etcd, api="auto", args=("-v",), lock_name=None, path=path,
                       env={"STUB_NETBIOS_NAME": lock_name, "STUB_PNN": "4",
                            "STUB_TESTPARM_MARK": mark})
        try:
            time.sleep(delay)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(3)
            status = child.status(1)
            stderr = child.stderr()
            assert no_traceback(stderr), "%s: %s" % (what, stderr)
            if code == -signal.SIGTERM:
                # Only before Python could install a handler: nothing said,
                # nothing done, and certainly no testparm run.
                assert status == "", (what, status)
                assert not os.path.exists(mark), (
                    "%s: killed by SIGTERM after it had run testparm" % what)
            else:
                assert status in ("", "0", "1"), (what, status, stderr)
                assert code == 0 or (status and code == int(status)), (what, code, status,
                                                                         stderr)
            if status == "0":
                # It held the lock: a release, not the TTL, must have ended it.
                assert nothing_held(etcd, key), (what, what_is_held(etcd, key))
            outcomes[(code, status)] = outcomes.get((code, status), 0) + 1
        finally:
            child.close()
    # Whatever an interrupted request may have left expires within the TTL
    # (v2's expiry and v3's lessor tick twice a second).
    wait_for(lambda: nothing_held(etcd, key) and not set(etcd.leases()) - leases,
             LOCK_TTL + 1.5, "nothing of theirs left in etcd (outcomes %r)" % outcomes)
    return outcomes


def test_sigterm_at_random_instants_short(etcd, launch, marking_testparm, tmp_path,
                                          lock_name, key):
    seed = random.randrange(1 << 30)
    sigterm_at_random_instants(etcd, launch, marking_testparm, tmp_path, lock_name, key,
                               15, seed)


@pytest.mark.soak
def test_sigterm_at_random_instants_soak(etcd, launch, marking_testparm, tmp_path,
                                         lock_name, key):
    seed = random.randrange(1 << 30)
    sigterm_at_random_instants(etcd, launch, marking_testparm, tmp_path, lock_name, key,
                               1000, seed)


# ---------------------------------------------------------------------------
# 2b. SIGTERM at every step of subprocess.py during start-up

# Runs the unchanged helper; at the Nth call into (or C call from)
# subprocess.py it sends itself SIGTERM and notes the monotonic time and
# which event it was.  N = 0: never; at exit, the number of such events goes
# to $SIGTEST_REPORT.
WRAPPER = r'''
import atexit, os, runpy, signal, subprocess, sys, threading, time

N = int(os.environ.pop("SIGTEST_N"))
REPORT = os.environ.pop("SIGTEST_REPORT")
SUBPROCESS = subprocess.__file__
count = 0


def hook(frame, event, arg):
    global count
    if event in ("call", "c_call") and frame.f_code.co_filename == SUBPROCESS:
        count += 1
        if count == N:
            called = frame.f_code.co_name if event == "call" else getattr(
                arg, "__qualname__", repr(arg))
            with open(REPORT + ".killed.tmp", "w") as f:
                f.write("%r %s %s in %s line %d" % (time.monotonic(), event, called,
                                                    frame.f_code.co_name, frame.f_lineno))
            os.rename(REPORT + ".killed.tmp", REPORT + ".killed")
            os.kill(os.getpid(), signal.SIGTERM)


@atexit.register
def report():
    sys.setprofile(None)
    with open(REPORT, "w") as f:
        f.write(str(count))


sys.argv = sys.argv[1:]
threading.setprofile(hook)
sys.setprofile(hook)
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture
def slow_testparm(tmp_path, stubs):
    """PATH with a testparm that takes 0.2 s to answer (and the other stand-ins)."""
    return own_testparm(tmp_path, stubs, "slow-bin",
                        'sleep 0.2\necho "$STUB_NETBIOS_NAME"\n')


@pytest.fixture
def wrapped(tmp_path, launch, slow_testparm):
    """wrapped(etcd, n, name) -> (child, report path): the helper under
    WRAPPER, its lock named ``name`` by testparm."""
    wrapper = tmp_path / "sigterm_at_n.py"
    wrapper.write_text(WRAPPER)

    def start(etcd, n, name):
        report = str(tmp_path / ("report-%s" % uuid.uuid4().hex[:8]))
        child = launch(etcd, api="auto", args=("-v",), lock_name=None,
                       wrap=[SYSTEM_PYTHON, str(wrapper)], path=slow_testparm,
                       env={"SIGTEST_N": str(n), "SIGTEST_REPORT": report,
                            "STUB_NETBIOS_NAME": name, "STUB_PNN": "5"})
        return child, report

    return start


def _killed(report):
    """(monotonic time, which event) of the wrapper's SIGTERM, or (None, None)."""
    try:
        with open(report + ".killed") as f:
            when, what = f.read().split(" ", 1)
        return float(when), what
    except FileNotFoundError:
        return None, None


def subprocess_events(etcd, wrapped, name):
    """How many subprocess.py events a whole start-up makes (N = infinity)."""
    child, report = wrapped(etcd, 0, name)
    try:
        assert child.status() == "0", child.stderr()
        child.proc.send_signal(signal.SIGTERM)
        assert child.wait(2) == 0
    finally:
        child.close()
    count = int(read_text(report))
    assert count > 10, "the wrapper saw hardly any subprocess.py events: %d" % count
    return count


def sigterm_at_event(etcd, wrapped, name, n):
    """One run: SIGTERM at the nth event.  False if this start-up made fewer
    (how many varies a little: communicate() may loop once more)."""
    child, report = wrapped(etcd, n, name)
    key = "/_locks/_ctdb/" + name
    try:
        started = time.monotonic()
        while child.running():
            killed, what = _killed(report)
            if killed is None and child.status_now() == "0":
                # Start-up done before the nth event: nothing to test.
                child.proc.send_signal(signal.SIGTERM)
                child.wait(2)
                return False
            assert killed is None or time.monotonic() - killed < 3, (
                "N=%d (%s): still running 3s after SIGTERM; stderr: %s"
                % (n, what, child.stderr()))
            assert time.monotonic() - started < 15, (
                "N=%d: neither signalled nor started; stderr: %s" % (n, child.stderr()))
            time.sleep(0.01)
        killed, what = _killed(report)
        stderr = child.stderr()
        assert no_traceback(stderr), "N=%d (%s): %s" % (n, what, stderr)
        assert child.proc.returncode == 0, "N=%d (%s): exit %s, status %r; stderr: %s" % (
            n, what, child.proc.returncode, child.status(1), stderr)
        # The signal came while testparm or ctdb ran: before any request to
        # etcd, so nothing may be there, not even for a TTL.
        assert nothing_held(etcd, key), "N=%d (%s): %r" % (n, what, what_is_held(etcd, key))
        return True
    finally:
        child.close()


def sweep(etcd, wrapped, lock_name, every):
    """SIGTERM at every ``every``th event, four runs at a time, each run with
    a lock of its own (so that one run's failure cannot spill into another's)."""
    count = subprocess_events(etcd, wrapped, lock_name)
    points = list(range(1, count + 1, every))
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(sigterm_at_event, etcd, wrapped, "%s-%d" % (lock_name, n), n)
                for n in points]
        try:
            reached = [run.result() for run in runs]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first failure is enough
            raise
    assert sum(reached) >= len(points) * 0.8, (count, points, reached)


def test_sigterm_at_subprocess_events_short(etcd34, wrapped, lock_name):
    # Every other event: each kind of instant is one event or more long.
    sweep(etcd34, wrapped, lock_name, every=2)


@pytest.mark.soak
def test_sigterm_at_subprocess_events_soak(etcd, wrapped, lock_name):
    sweep(etcd, wrapped, lock_name, every=1)


# ---------------------------------------------------------------------------
# 3. A second SIGTERM never cuts the release short

@pytest.mark.parametrize("gap", [0, 0.003, 0.010], ids=["at-once", "3ms", "10ms"])
@pytest.mark.parametrize("flavour,api", [("etcd34", "v2"), ("etcd34", "auto"),
                                         ("etcd35", "v3")])
def test_second_sigterm_does_not_cut_the_release_short(member, api, launch, key, gap):
    holder = launch(member, api=api, args=("-vv",))
    assert holder.status() == "0"
    kv = member.v3_kv(key) if "v3" in held_apis(api, member) else None
    holder.proc.send_signal(signal.SIGTERM)
    if gap:
        time.sleep(gap)
    holder.proc.send_signal(signal.SIGTERM)
    code = holder.wait(1)
    assert no_traceback(holder.stderr()), holder.stderr()
    # Released at once, not left to expire.
    assert nothing_held(member, key), what_is_held(member, key)
    if kv:
        assert int(kv["lease"]) not in [int(lease) for lease in member.leases()]
    assert code == 0, "exit %s; stderr: %s" % (code, holder.stderr())


# ---------------------------------------------------------------------------
# 4. testparm hangs: parent gone, or SIGTERM

@pytest.fixture
def hung_testparm(tmp_path, stubs):
    """(PATH, pidfile): a testparm that notes its pid and sleeps 30 s."""
    pidfile = str(tmp_path / "testparm.pid")
    path = own_testparm(tmp_path, stubs, "hung-bin",
                        'echo $$ > "%s.tmp" && mv "%s.tmp" "%s"\nexec sleep 30\n'
                        % (pidfile, pidfile, pidfile))
    yield path, pidfile
    if read_text(pidfile):
        kill_if_ours(int(read_text(pidfile)), "sleep")


def test_parent_gone_while_testparm_runs(etcd34, tmp_path, stubs, hung_testparm, key,
                                         lock_name, spawn_under_parent):
    path, testparm_pidfile = hung_testparm
    config = write_config(str(tmp_path / "parent.conf"), {
        "port": etcd34.port, "lock_ttl": LOCK_TTL, "refresh": REFRESH})
    env = helper_env(path, tmp_path, STUB_NETBIOS_NAME=lock_name)
    parent, helper_pid = spawn_under_parent(config, [HELPER, "-v"], env, status=None)
    testparm_pid = read_pidfile(testparm_pidfile, 5, "testparm to start")
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 1
    _gone_by(deadline, [helper_pid], "the helper to exit once its parent was killed")
    _gone_by(deadline, [testparm_pid], "the helper's testparm to be killed too")
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


def test_sigterm_while_testparm_runs(etcd34, launch, hung_testparm, key, lock_name):
    path, testparm_pidfile = hung_testparm
    helper = launch(etcd34, lock_name=None, path=path,
                    env={"STUB_NETBIOS_NAME": lock_name})
    testparm_pid = read_pidfile(testparm_pidfile, 5, "testparm to start")
    helper.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1
    assert helper.wait(1) == 0
    _gone_by(deadline, [testparm_pid], "the helper's testparm to be killed too")
    assert no_traceback(helper.stderr()), helper.stderr()
    assert helper.status(0.1) == ""
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


# ---------------------------------------------------------------------------
# 5. Orphan at birth: the parent is gone before the helper starts

# Forks; the parent exits at once; the child waits until PID 1 adopts it,
# notes its pid (or "ppid N" if a subreaper adopted it instead), then
# becomes the helper.
ORPHAN = r'''
import os, sys, time
pidfile = sys.argv[1]
if os.fork():
    os._exit(0)
deadline = time.monotonic() + 2
while os.getppid() != 1 and time.monotonic() < deadline:
    time.sleep(0.005)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()) if os.getppid() == 1 else "ppid %d" % os.getppid())
os.rename(pidfile + ".tmp", pidfile)
if os.getppid() == 1:
    os.execv(sys.argv[2], sys.argv[2:])
'''


def test_orphan_at_birth_takes_nothing(etcd34, tmp_path, stubs, key, lock_name):
    config = write_config(str(tmp_path / "orphan.conf"), {
        "port": etcd34.port, "lock_ttl": LOCK_TTL, "refresh": REFRESH,
        "lock_name": lock_name})
    pidfile = str(tmp_path / "orphan.pid")
    leases = set(etcd34.leases())
    with open(str(tmp_path / "orphan.stderr"), "wb") as stderr:
        wrapper = subprocess.Popen([sys.executable, "-c", ORPHAN, pidfile, HELPER, "-v",
                                    "-c", config], env=helper_env(stubs, tmp_path),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, bufsize=0)
    try:
        wrapper.wait(5)
        text = wait_for(lambda: read_text(pidfile), 5, "the orphan to be adopted")
        if text.startswith("ppid"):
            pytest.skip("orphans are adopted by a subreaper here (%s), not by PID 1" % text)
        pid = int(text)
        started = time.monotonic()
        # stdout: whatever the helper writes, then EOF when it is gone.
        out = b""
        while True:
            ready, _, _ = select.select([wrapper.stdout], [], [],
                                       max(started + 3 - time.monotonic(), 0))
            assert ready, "the orphaned helper still runs after 3s, stdout %r; stderr: %s" % (
                out, read_text(str(tmp_path / "orphan.stderr")))
            chunk = os.read(wrapper.stdout.fileno(), 64)
            if not chunk:
                break
            out += chunk
        assert b"0" not in out, out
        _gone_by(started + 3, [pid], "the orphaned helper to exit")
        assert nothing_held(etcd34, key), what_is_held(etcd34, key)
        assert not set(etcd34.leases()) - leases
    finally:
        wrapper.stdout.close()
        text = read_text(pidfile)
        if text.isdigit():
            kill_if_ours(int(text), HELPER)


# ---------------------------------------------------------------------------
# 6. stdout's reader goes

def test_stdout_reader_gone_after_status_releases(etcd, spawn, key):
    holder = spawn(etcd, api="auto", args=("-v",))
    assert holder.status() == "0"
    holder.proc.stdout.close()
    holder.wait(1)
    assert no_traceback(holder.stderr()), holder.stderr()
    assert nothing_held(etcd, key), what_is_held(etcd, key)


def test_stdout_reader_gone_before_status_while_etcd_is_silent(own_etcd, spawn):
    own_etcd.pause()
    try:
        helper = spawn(own_etcd, api="auto", args=("-vv",), lock_ttl=9, refresh=2)
        wait_for(lambda: "POST " in helper.stderr(), 5, "a request to the paused etcd")
        assert helper.running(), helper.stderr()
        helper.proc.stdout.close()
        helper.wait(1)
        assert no_traceback(helper.stderr()), helper.stderr()
    finally:
        own_etcd.resume()


# ---------------------------------------------------------------------------
# 7. Standard fds closed at the start

def closing(fds):
    """A shell that closes the given redirections, then runs the helper."""
    return ["/bin/sh", "-c", 'exec "$@" %s' % fds, "sh"]


def test_stdout_closed_at_start_is_an_error(etcd34, launch, key):
    leases = set(etcd34.leases())
    helper = launch(etcd34, api="auto", args=(), wrap=closing("1>&-"),
                    stdout=subprocess.DEVNULL)
    assert helper.wait(5) == 3
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "stdout" in lines[0], lines
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)
    assert not set(etcd34.leases()) - leases


@pytest.mark.parametrize("flavour", ["etcd34", "etcd35"])
def test_stdin_and_stderr_closed_at_start_works(member, launch, key):
    # -vv: were the log written to whatever fd 2 turned into (a socket to
    # etcd, say), the lock would not hold.
    holder = launch(member, api="auto", args=("-vv",), wrap=closing("0<&- 2>&-"))
    assert holder.status() == "0", holder.stderr()
    assert_holds(holder, member, "auto", key, LOCK_TTL + 0.5)
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.wait(1) == 0
    assert holder.eof(1) and holder.after_status == b""
    assert nothing_held(member, key), what_is_held(member, key)


# ---------------------------------------------------------------------------
# 8. stdout not a pipe

def test_stdout_a_regular_file_holds_with_a_warning(etcd34, launch, key, tmp_path):
    out = tmp_path / "status"
    with open(str(out), "wb") as f:
        holder = launch(etcd34, api="auto", args=(), stdout=f)
    wait_for(lambda: out.read_bytes() == b"0", 5, "'0' in the file")
    assert_holds(holder, etcd34, "auto", key, LOCK_TTL + 0.5)
    lines = holder.stderr_lines()
    assert len(lines) == 1 and "stdout" in lines[0] and "pipe" in lines[0], lines
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.wait(1) == 0
    assert out.read_bytes() == b"0"
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


# ---------------------------------------------------------------------------
# 9. Found by an adversarial review

def test_status_write_failing_releases(etcd34, launch, key):
    # stdout /dev/full: the '0' cannot be written (ENOSPC, not EPIPE); the
    # lock goes back at once instead of waiting out its TTL.
    with open("/dev/full", "wb") as full:
        helper = launch(etcd34, api="auto", args=("-v",), stdout=full)
    assert helper.wait(3) == 0
    assert no_traceback(helper.stderr()), helper.stderr()
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


# Blocks SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGALRM, then becomes the
# helper: the mask is inherited across exec.
BLOCKING = ("import os, signal, sys\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT,"
            " signal.SIGHUP, signal.SIGUSR1, signal.SIGALRM})\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_inherited_signal_mask_does_not_keep_sigterm_out(etcd34, launch, key, signum):
    holder = launch(etcd34, api="auto", args=(), wrap=[SYSTEM_PYTHON, "-c", BLOCKING])
    assert holder.status() == "0", holder.stderr()
    holder.proc.send_signal(signum)
    assert holder.wait(1) == 0
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


# Every signal whose default action ends a process gets SIGTERM's handling:
# left to that default, it would kill a holder outright, the lock left
# behind for up to lock_ttl.
ENDING = [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGPROF,
          signal.SIGRTMIN + 2]


@pytest.mark.parametrize("signum", ENDING, ids=["HUP", "USR1", "USR2", "QUIT", "PROF",
                                               "RTMIN+2"])
@pytest.mark.parametrize("flavour,api", [("etcd34", "auto"), ("etcd35", "v3")])
def test_other_ending_signals_release_like_sigterm(member, api, launch, key, signum):
    holder = launch(member, api=api, args=("-v",))
    assert holder.status() == "0", holder.stderr()
    holder.proc.send_signal(signum)
    code = holder.wait(3)
    assert code == 0, "exit %s; stderr: %s" % (code, holder.stderr())
    assert nothing_held(member, key), what_is_held(member, key)  # given back, not left
    assert "releasing lock %s: terminated by" % key in holder.stderr(), holder.stderr()
    assert no_traceback(holder.stderr()), holder.stderr()


def test_stdout_closed_and_stderr_full_exits_at_once(etcd34, launch, full_pipe, key):
    helper = launch(etcd34, api="auto", args=(), wrap=closing("1>&-"),
                    stdout=subprocess.DEVNULL, stderr=full_pipe.w)
    assert helper.wait(3) == 3
    assert nothing_held(etcd34, key), what_is_held(etcd34, key)


def test_testparm_leaving_a_child_on_its_stdout(etcd34, launch, tmp_path, stubs, lock_name):
    # It answers and exits at once; what it left behind keeps its stdout
    # open for 30 s.  Its answer counts, without waiting for that.
    path = own_testparm(tmp_path, stubs, "daemon-bin",
                        'echo "$STUB_NETBIOS_NAME"\n(sleep 30 &)\n')
    started = time.monotonic()
    holder = launch(etcd34, api="auto", args=(), lock_name=None, path=path,
                    env={"STUB_NETBIOS_NAME": lock_name})
    assert holder.status() == "0", holder.stderr()
    assert time.monotonic() - started < 2
    assert holder.terminate() == 0
