"""Shared fixtures: real etcd members (lib/etcdmember.py) on free loopback
ports, and the helper spawned as ctdbd spawns it (stdout a pipe, stderr
captured, signals)."""

import os
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
sys.path.insert(0, ROOT)
from etcdmember import MAIN_FLAVOURS, read_text, start_etcd, wait_for  # noqa: E402
from delayproxy import DelayProxy  # noqa: E402


HELPER = os.path.join(ROOT, "ctdb_etcd_lock.py")
ORIGINAL = "/usr/libexec/ctdb/ctdb_etcd_lock"
SYSTEM_PYTHON = "/usr/bin/python3"

@pytest.fixture(scope="session")
def etcd_members(tmp_path_factory):
    """One long-lived member per flavour, started on first use."""
    members = {}

    def get(flavour):
        if flavour not in members:
            members[flavour] = start_etcd(flavour, str(tmp_path_factory.mktemp(flavour)))
        return members[flavour]
    yield get
    for member in members.values():
        member.stop()


@pytest.fixture(params=MAIN_FLAVOURS)
def etcd(request, etcd_members):
    """The shared member of each flavour in turn (tests use their own lock names)."""
    return etcd_members(request.param)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A CA, and server and client certificates of every kind the TLS tests
    need (certs.py), made once."""
    from certs import session_certs
    return session_certs(tmp_path_factory)


@pytest.fixture
def etcd34(etcd_members):
    """etcd 3.4 with v2 on: where the original helper works."""
    return etcd_members("etcd34")


# Every API on every flavour that serves it (test_v2 checks api = v2 on an
# etcd without v2): a test that takes ``case`` (or ``api``) runs for each.
CASES = [("etcd34", "v2"), ("etcd34", "v3"), ("etcd34", "auto"),
         ("etcd35", "v3"), ("etcd35", "auto")]


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def case(request):
    return request.param


@pytest.fixture
def api(case):
    return case[1]


@pytest.fixture
def case_etcd(case, etcd_members):
    """The shared member of the case's flavour."""
    return etcd_members(case[0])


def the_case_member(case_etcd):
    """For a module whose tests run once per case rather than once per
    flavour: ``etcd = pytest.fixture(name="etcd")(the_case_member)`` makes
    its ``etcd`` the case's member."""
    return case_etcd


@pytest.fixture(params=MAIN_FLAVOURS)
def own_etcd(request, tmp_path):
    """A member of each flavour for this test alone (to pause or stop it)."""
    member = start_etcd(request.param, str(tmp_path))
    yield member
    member.stop()


# ---------------------------------------------------------------------------
# Helpers, spawned as ctdbd spawns them

@pytest.fixture
def lock_name():
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def stubs(tmp_path):
    """Stand-ins for Samba's testparm and ctdb on PATH (no Samba config or
    ctdbd here); they print $STUB_NETBIOS_NAME and $STUB_PNN."""
    bindir = tmp_path / "stub-bin"
    bindir.mkdir()
    for name, var in (("testparm", "STUB_NETBIOS_NAME"), ("ctdb", "STUB_PNN")):
        script = bindir / name
        script.write_text('#!/bin/sh\n[ -n "$%s" ] || exit 1\necho "$%s"\n' % (var, var))
        script.chmod(0o755)
    return str(bindir)


class Helper:
    """A running helper (or a wrapper around one) with chosen stdin, stdout
    and stderr: its status byte, stderr and exit.

    stdout, when a pipe, is read unbuffered: the status byte, then EOF.
    stderr, unless given, goes to a file the test can read.
    """

    def __init__(self, argv, env, cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=None):
        self.stderr_path = None
        self._stderr = None
        if stderr is None:
            self.stderr_path = os.path.join(cwd, "stderr-%s" % uuid.uuid4().hex[:6])
            self._stderr = stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                     env=env, cwd=cwd, bufsize=0)
        self._status = None
        self.after_status = b""
        self.started = time.monotonic()

    def _read(self, timeout):
        """One read of stdout: bytes, b'' at EOF, None if nothing within timeout."""
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        return os.read(self.proc.stdout.fileno(), 64) if ready else None

    def status(self, timeout=15):
        """The one status character, or '' for EOF before it."""
        if self._status is None:
            data = self._read(timeout)
            assert data is not None, "no status byte within %ss; stderr: %s" % (
                timeout, self.stderr())
            self._status, self.after_status = data[:1].decode(), data[1:]
        return self._status

    def status_now(self):
        """The status if one was written (or EOF came), else None; never waits."""
        if self._status is None:
            data = self._read(0)
            if data is None:
                return None
            self._status, self.after_status = data[:1].decode(), data[1:]
        return self._status

    def eof(self, timeout):
        """True once stdout reaches EOF within timeout (after the status)."""
        deadline = time.monotonic() + timeout
        if self.status_now() is None:
            self.status(timeout)
        if self._status == "":
            return True
        while True:
            data = self._read(deadline - time.monotonic())
            if data is None:
                return False
            if data == b"":
                return True
            self.after_status += data

    def rest_of_stdout(self):
        """Everything after the status byte (must be nothing); waits for exit."""
        self.wait()
        return self.after_status + self.proc.stdout.read()

    def wait(self, timeout=15):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("helper still running after %ss; stderr: %s"
                                 % (timeout, self.stderr())) from None

    def running(self):
        return self.proc.poll() is None

    def terminate(self):
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def stderr(self):
        if self.stderr_path is None:
            return "(stderr is the test's own)"
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr_lines(self):
        return [line for line in self.stderr().splitlines() if line.strip()]

    def close(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._stderr:
            self._stderr.close()


def helper_env(stubs, ctdb_base, **extra):
    """ctdbd's environment for a helper: CTDB_BASE, and our stand-ins on PATH."""
    env = dict(os.environ, PATH=stubs + os.pathsep + os.environ["PATH"],
               CTDB_BASE=str(ctdb_base))
    env.update(extra)
    return env


def write_config(path, settings):
    with open(path, "w") as f:
        for key, value in settings.items():
            f.write("%s = %s\n" % (key, value))
    return path


@pytest.fixture
def started():
    """Every helper a test starts, killed (if still running) when it ends."""
    helpers = []
    yield helpers
    for helper in helpers:
        helper.close()


@pytest.fixture
def spawn(tmp_path, stubs, lock_name, started):
    """spawn(etcd, api=..., **settings) starts our helper with a config file.

    Short TTLs keep the suite quick: lock_ttl 3, refresh 0.5 unless given;
    a setting given as None is left out.  ``wrap`` goes before the helper's
    path (a shell that closes fds, a Python wrapper); ``path`` replaces the
    stand-ins' directory on PATH; stdin, stdout and stderr as for Popen.
    """
    def start(etcd=None, args=("-v",), config=None, env=None, wrap=(), path=None,
              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, **settings):
        if config is None:
            values = {"lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name}
            if etcd is not None:
                values["port"] = etcd.port
            values.update(settings)
            config = write_config(str(tmp_path / ("etcd-%d" % len(started))),
                                  {k: v for k, v in values.items() if v is not None})
        argv = list(wrap) + [HELPER] + list(args) + (["-c", config] if config else [])
        helper = Helper(argv, helper_env(path or stubs, tmp_path, **(env or {})),
                        str(tmp_path), stdin=stdin, stdout=stdout, stderr=stderr)
        started.append(helper)
        return helper

    return start


@pytest.fixture
def spawn_original(tmp_path, stubs, lock_name, started):
    """The original helper (Samba's, on python-etcd), as ctdbd would run it."""
    if not os.path.exists(ORIGINAL):
        pytest.fail("the original helper %s is missing: install Debian's ctdb and "
                    "python3-etcd (tests/run does)" % ORIGINAL)

    def start(etcd, lock_ttl=3, lock_refresh=1):
        base = tmp_path / ("original-%d" % len(started))
        base.mkdir()
        # Its parser takes no blank lines or comments, and int() or a string
        # (so no fractions of a second).
        write_config(str(base / "etcd"), {"port": etcd.port, "lock_ttl": lock_ttl,
                                          "lock_refresh": lock_refresh})
        env = helper_env(stubs, base, STUB_NETBIOS_NAME=lock_name, STUB_PNN="7")
        helper = Helper([SYSTEM_PYTHON, ORIGINAL], env, str(base))
        started.append(helper)
        return helper

    return start


def delete_held(etcd, where, key):
    """Delete the lock a helper holds, behind its back (v2: its entry)."""
    if where == "v2":
        etcd.v2("DELETE", etcd.v2_entries(key)[0]["key"])
    else:
        etcd.v3_delete(key)


def replace_held(etcd, where, key):
    """Put another value where a helper holds the lock."""
    if where == "v2":
        etcd.v2("PUT", etcd.v2_entries(key)[0]["key"], value="someone else")
    else:
        etcd.v3_put(key, "someone else")


@pytest.fixture
def key(lock_name):
    return "/_locks/_ctdb/" + lock_name


# A stand-in for ctdbd: starts the helper (stdout and stderr its own, so
# ours to read), notes the helper's pid, and sleeps until killed.
PARENT = ("import os, subprocess, sys, time\n"
          "comm = os.environ.pop('PARENT_COMM', '')\n"
          "comm and open('/proc/self/comm', 'w').write(comm)\n"
          "p = subprocess.Popen(sys.argv[2:])\n"
          "open(sys.argv[1] + '.tmp', 'w').write(str(p.pid))\n"
          "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
          "time.sleep(600)\n")


@pytest.fixture
def spawn_under_parent(tmp_path):
    """spawn_under_parent(config, helper_argv=None, env=None, status="0",
    comm=None) -> (parent, helper pid).

    The helper runs under a stand-in for ctdbd that the test can kill;
    ``status``: the byte to wait for on its stdout first (None: no wait).
    ``comm``: the stand-in's process name (ctdbd's main daemon is
    ``ctdbd``, its recovery daemon ``ctdb_recoverd``).  Helpers still
    running at the end are killed.
    """
    parents, helpers = [], []

    def start(config, helper_argv=None, env=None, status="0", comm=None):
        pidfile = str(tmp_path / ("helper-%d.pid" % len(parents)))
        if comm:
            env = dict(env or os.environ, PARENT_COMM=comm)
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, pidfile] + (helper_argv or [HELPER])
            + ["-c", str(config)], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        parents.append(parent)
        if status is not None:
            assert parent.stdout.read(1) == status.encode()
        pid = int(wait_for(lambda: read_text(pidfile), 5, "the helper's pid"))
        helpers.append(pid)
        return parent, pid

    yield start
    for parent in parents:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        parent.stderr.close()
    for pid in helpers:
        kill_if_ours(pid, HELPER)


def kill_if_ours(pid, marker):
    """SIGKILL a process a test started indirectly, if it is still the one."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if marker.encode() in f.read():
                os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def alive(pid):
    """Running (a zombie is gone as far as etcd is concerned; init reaps it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def held_apis(api, etcd):
    """The keyspaces a helper of this api holds the lock in on this etcd."""
    if api == "auto":
        return ["v3", "v2"] if etcd.serves_v2 else ["v3"]
    return [api]


def own_testparm(tmp_path, stubs, name, body):
    """PATH with a testparm of our own (a shell script's body) before the
    other stand-ins."""
    bindir = tmp_path / name
    bindir.mkdir()
    script = bindir / "testparm"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(bindir) + os.pathsep + stubs


# ---------------------------------------------------------------------------
# Two holders: when a holder's stdout closed, against when another said '0'

@pytest.fixture
def delay_proxy():
    """delay_proxy(port): a DelayProxy before that port, closed at the end."""
    proxies = []

    def start(port):
        proxy = DelayProxy(port)
        proxies.append(proxy)
        return proxy
    yield start
    for proxy in proxies:
        proxy.close()


def eof_clock(helper, timeout):
    """A thread notes when the helper's stdout reaches EOF (after its '0'):
    a list that holds that time once it comes."""
    import threading
    when = []

    def note():
        if helper.eof(timeout):
            when.append(time.monotonic())
    threading.Thread(target=note, daemon=True).start()
    return when


def next_holder(spawn, timeout, **settings):
    """Contenders one after another (no handover wait) until one says '0':
    (the time it said so, that helper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        other = spawn(args=(), **dict(settings, handover_wait=0))
        if other.status(timeout=15) == "0":
            return time.monotonic(), other
        other.wait()
        other.close()
    raise AssertionError("nobody took the lock within %.1fs" % timeout)


# ---------------------------------------------------------------------------
# The fast tier's stand-ins (tests marked fast): the helper's own code, in
# process, on a clock the test turns and a transport that answers from a
# script.  No etcd, no subprocess, no real time.

class FakeWatch:
    """Watch as Holder, take() and run() use it: ``clock()`` is a counter
    that only sleep() and wait() move (or the test, through ``now``);
    wait() raises _NoTime at its deadline as Watch.wait does, there being
    nothing else to wait for."""

    def __init__(self, now=1000.0):
        self.now = now
        self.sleeps = []  # (from, seconds) of each sleep
        self.leaving = False
        self.orphan = False
        self.ppid = 0  # no process: _comm(0) is None, so not ctdbd

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append((self.now, seconds))
        self.now += max(seconds, 0)

    def wait(self, deadline, readers=(), writers=()):
        self.now = max(self.now, deadline)
        import ctdb_etcd_lock
        raise ctdb_etcd_lock._NoTime()

    def check(self):
        pass

    def leave(self):
        self.leaving = True


class FakeLog:
    """Log: the lines, by level, in order (``verbose`` as run() sets it)."""

    def __init__(self):
        self.verbose = 0
        self.lines = []

    def error(self, message):
        self.lines.append(("error", message))

    def info(self, message):
        self.lines.append(("info", message))

    def debug(self, message):
        self.lines.append(("debug", message))

    def trace(self, message):
        self.lines.append(("trace", message))

    def text(self, *levels):
        return "\n".join(message for level, message in self.lines
                         if not levels or level in levels)


class Call:
    """One request a lock made of the scripted transport."""

    def __init__(self, method, path, deadline, sent, form, body, headers, behind, api):
        self.method, self.path, self.deadline, self.sent = method, path, deadline, sent
        self.form, self.headers, self.behind, self.api = form, headers, behind, api
        self.body = None if body is None else __import__("json").loads(body.decode())

    def __repr__(self):
        return "%s %s" % (self.method, self.path)


class ScriptedTransport:
    """Transport as the locks use it, answering from a script of
    (method, path prefix, answer): each request must be the next one
    expected, or the test fails (pytest.fail: no except in the helper
    catches it).  An answer is (status, JSON data[, headers]), an exception
    to raise, or a function of the Call that returns or raises one (and may
    move the clock: a slow member).  ``expect()`` adds to the script; the
    fixture ``scripted`` fails a test that leaves some of it unasked."""

    CLUSTER = "27a4c376471fe96b"

    def __init__(self, watch, members=1):
        import ctdb_etcd_lock
        self.watch = watch
        self.clock = watch.clock
        self.script = []
        self.calls = []
        self.unanswered = 0
        self.members = [[ctdb_etcd_lock.Endpoint("http", "127.0.0.%d" % (i + 1), 2379),
                         [("addr", i)]] for i in range(members)]
        self.endpoint = self.members[0][0].url
        self.clusters = []  # check_cluster's arguments
        self.in_flight = []  # what answers_in_flight() gives
        self.unheard = []  # what ask_unheard() answers in turn (then False)
        self.v2_served = []  # what serves_v2() answers in turn (then None)
        self.confirmed_until = None  # confirm_cluster's deadline, once asked
        self.closed = False

    def expect(self, method, path, answer):
        self.script.append((method, path, answer))
        return self

    def request(self, method, path, deadline, form=None, body=None, headers=None,
                behind=False, secret=False, api=None):
        import json
        import ctdb_etcd_lock
        call = Call(method, path, deadline, self.clock(), form, body, headers, behind, api)
        self.calls.append(call)
        if not self.script:
            pytest.fail("unexpected request %r (the script is done; asked before: %r)"
                        % (call, self.calls[:-1]))
        want, prefix, answer = self.script.pop(0)
        if method != want or not path.startswith(prefix):
            pytest.fail("request %r where the script expects %s %s" % (call, want, prefix))
        if callable(answer) and not isinstance(answer, type):
            answer = answer(call)
        if isinstance(answer, BaseException) or isinstance(answer, type):
            raise answer
        status, data = answer[:2]
        headers = dict(answer[2]) if len(answer) > 2 else {
            "x-etcd-cluster-id": self.CLUSTER}
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        return ctdb_etcd_lock.Response(status, headers, body, self.endpoint)

    def check_cluster(self, cluster_id, endpoint, member_id=None):
        self.clusters.append((cluster_id, endpoint, member_id))

    def answers_in_flight(self, deadline):
        return list(self.in_flight)

    def ask_unheard(self, deadline):
        return self.unheard.pop(0) if self.unheard else False

    def serves_v2(self, index, deadline):
        return self.v2_served.pop(0) if self.v2_served else None

    def confirm_cluster(self, deadline):
        self.confirmed_until = deadline

    def close(self):
        self.closed = True

    def asked(self):
        """The requests so far, as 'METHOD path' without a query."""
        return ["%s %s" % (call.method, call.path.split("?")[0]) for call in self.calls]


@pytest.fixture
def fake_watch():
    return FakeWatch()


@pytest.fixture
def fake_log():
    return FakeLog()


@pytest.fixture
def scripted(fake_watch):
    """scripted(members=1): a ScriptedTransport on the fake clock; the test
    fails if any of its script is left unasked."""
    made = []

    def make(members=1):
        made.append(ScriptedTransport(fake_watch, members))
        return made[-1]
    yield make
    for transport in made:
        assert transport.script == [], "expected, never asked: %r" % transport.script


@pytest.fixture
def backstop(monkeypatch):
    """The SIGALRM backstop, noted instead of armed (in process, it would end
    the test run): the seconds of each arm()."""
    import ctdb_etcd_lock
    armed = []
    monkeypatch.setattr(ctdb_etcd_lock.Backstop, "arm",
                        classmethod(lambda cls, seconds, why: armed.append(seconds)))
    return armed


def fast_config(**values):
    """A Config as read_config builds it, from these values (lock_name 't',
    lock_ttl 9, refresh 2 unless given); ``lines`` marks settings as given
    in the file."""
    import ctdb_etcd_lock
    lines = values.pop("lines", {})
    settings = dict({"lock_name": "t", "lock_ttl": 9, "refresh": 2.0}, **values)
    return ctdb_etcd_lock.Config(settings, source="/etc/ctdb/etcd" if lines else None,
                                 lines=lines)
