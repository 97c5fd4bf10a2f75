"""Shared fixtures: real etcd members (etcdmember.py) on free loopback
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from etcdmember import FLAVOURS, start_etcd, wait_for  # noqa: E402


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


@pytest.fixture(params=sorted(FLAVOURS))
def etcd(request, etcd_members):
    """The shared member of each flavour in turn (tests use their own lock names)."""
    return etcd_members(request.param)


@pytest.fixture
def etcd34(etcd_members):
    """etcd 3.4 with v2 on: where the original helper works."""
    return etcd_members("etcd34")


@pytest.fixture(params=sorted(FLAVOURS))
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
    """A running helper: its status byte, stderr and exit."""

    def __init__(self, argv, env, cwd):
        self.stderr_path = os.path.join(cwd, "stderr-%s" % uuid.uuid4().hex[:6])
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, cwd=cwd)
        self._status = None
        self.started = time.monotonic()

    def status(self, timeout=15):
        """The one status character, or '' for EOF before it."""
        if self._status is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, "no status byte within %ss; stderr: %s" % (timeout, self.stderr())
            self._status = self.proc.stdout.read(1).decode()
        return self._status

    def rest_of_stdout(self):
        """Everything after the status byte (must be nothing); waits for exit."""
        self.wait()
        return self.proc.stdout.read()

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
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr_lines(self):
        return [line for line in self.stderr().splitlines() if line.strip()]

    def close(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
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

    Short TTLs keep the suite quick: lock_ttl 3, refresh 0.5 unless given.
    """
    def start(etcd=None, args=("-v",), config=None, env=None, **settings):
        if config is None:
            values = {"lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name}
            if etcd is not None:
                values["port"] = etcd.port
            values.update(settings)
            config = write_config(str(tmp_path / ("etcd-%d" % len(started))),
                                  {k: v for k, v in values.items() if v is not None})
        argv = [HELPER] + list(args) + (["-c", config] if config else [])
        helper = Helper(argv, helper_env(stubs, tmp_path, **(env or {})), str(tmp_path))
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


@pytest.fixture
def key(lock_name):
    return "/_locks/_ctdb/" + lock_name


@pytest.fixture
def spawn_under_parent(tmp_path):
    """spawn_under_parent(config_path, helper_argv=None) -> (parent, helper pid).

    A stand-in for ctdbd: a process that starts the helper (its stdout is
    ours to read the status from) and can then be killed.
    """
    parents = []

    def start(config, helper_argv=None):
        pidfile = tmp_path / ("helper-%d.pid" % len(parents))
        parent = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys, time\n"
             "p = subprocess.Popen(sys.argv[1:])\n"
             "open(%r, 'w').write(str(p.pid))\n"
             "time.sleep(600)\n" % str(pidfile)] + (helper_argv or [HELPER])
            + ["-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        parents.append(parent)
        assert parent.stdout.read(1) == b"0"
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 5,
                           "the helper's pid"))
        return parent, pid

    yield start
    for parent in parents:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        parent.stderr.close()
