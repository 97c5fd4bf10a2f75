"""Shared fixtures: real etcd members on free loopback ports, and the helper
spawned as ctdbd spawns it (stdout a pipe, stderr captured, signals).

Two etcd flavours run the lock suite:
    etcd34  Debian 12's etcd 3.4, with --enable-v2 (v2 and v3 served)
    etcd35  Debian 13's etcd 3.5, v2 off as by default (v3 only)
Whichever is not the system's etcd-server is fetched by tests/fetch_etcd.py.
"""

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fetch_etcd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "ctdb_etcd_lock.py")
ORIGINAL = "/usr/libexec/ctdb/ctdb_etcd_lock"
SYSTEM_PYTHON = "/usr/bin/python3"

# flavour -> (Debian suite, v2 on)
FLAVOURS = {"etcd34": ("bookworm", True), "etcd35": ("trixie", False)}


def wait_for(predicate, timeout, what):
    """Poll predicate until it is true; fail the test naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# etcd members

class Etcd:
    """One etcd member in a temp dir; a tiny client for checking what it holds."""

    def __init__(self, binary, v2, workdir):
        self.binary = binary
        self.serves_v2 = v2
        self.workdir = workdir
        self.proc = None
        self.port = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        for _ in range(5):
            self.port, peer = free_port(), free_port()
            argv = [self.binary, "--name", "m0", "--data-dir", os.path.join(self.workdir, "data"),
                    "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                    "--listen-peer-urls", "http://127.0.0.1:%d" % peer,
                    "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
                    "--initial-cluster", "m0=http://127.0.0.1:%d" % peer]
            if self.serves_v2:
                argv.append("--enable-v2")
            log = open(os.path.join(self.workdir, "etcd.log"), "ab")
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            try:
                wait_for(lambda: self.proc.poll() is not None or self.healthy(), 20,
                         "etcd to become healthy")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            shutil.rmtree(os.path.join(self.workdir, "data"), ignore_errors=True)
        raise RuntimeError("etcd would not start; see %s/etcd.log" % self.workdir)

    def healthy(self):
        try:
            return json.loads(self.http("GET", "/health")[1]).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    # -- plain HTTP, as a test's own eyes on the server --------------------

    def http(self, method, path, body=None, headers=None, timeout=5):
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def v2(self, method, key, **params):
        query = "?" + urllib.parse.urlencode(params) if params and method in ("GET", "DELETE") else ""
        body = urllib.parse.urlencode(params).encode() if params and not query else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        status, data = self.http(method, "/v2/keys" + urllib.parse.quote(key) + query,
                                 body, headers)
        return status, json.loads(data)

    def v2_value(self, key):
        status, data = self.v2("GET", key, quorum="true")
        return data["node"].get("value") if status == 200 else None

    def v3(self, method, payload):
        status, data = self.http("POST", "/v3" + method, json.dumps(payload).encode(),
                                 {"Content-Type": "application/json"})
        assert status == 200, (method, status, data)
        return json.loads(data)

    def v3_kv(self, key):
        kvs = self.v3("/kv/range", {"key": b64(key)}).get("kvs") or []
        return kvs[0] if kvs else None

    def v3_value(self, key):
        kv = self.v3_kv(key)
        return base64.b64decode(kv["value"]).decode() if kv else None

    def v3_put(self, key, value, lease=None):
        payload = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = lease
        return self.v3("/kv/put", payload)

    def v3_delete(self, key):
        return self.v3("/kv/deleterange", {"key": b64(key)})

    def leases(self):
        return [lease["ID"] for lease in self.v3("/lease/leases", {}).get("leases") or []]

    def value(self, api, key):
        return self.v2_value(key) if api == "v2" else self.v3_value(key)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def start_etcd(flavour, workdir, v2=None):
    suite, default_v2 = FLAVOURS[flavour]
    binary = fetch_etcd.etcd_binary(suite)
    return Etcd(binary, default_v2 if v2 is None else v2, workdir).start()


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


def write_config(path, settings):
    with open(path, "w") as f:
        for key, value in settings.items():
            f.write("%s = %s\n" % (key, value))
    return path


@pytest.fixture
def spawn(tmp_path, stubs, lock_name):
    """spawn(etcd, api=..., **settings) starts our helper with a config file.

    Short TTLs keep the suite quick: lock_ttl 3, refresh 0.5 unless given.
    """
    helpers = []

    def start(etcd=None, args=("-v",), config=None, env=None, **settings):
        if config is None:
            values = {"lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name}
            if etcd is not None:
                values["port"] = etcd.port
            values.update(settings)
            config = write_config(str(tmp_path / ("etcd-%d" % len(helpers))),
                                  {k: v for k, v in values.items() if v is not None})
        environ = dict(os.environ, PATH=stubs + os.pathsep + os.environ["PATH"],
                       CTDB_BASE=str(tmp_path))
        environ.update(env or {})
        argv = [HELPER] + list(args) + (["-c", config] if config else [])
        helper = Helper(argv, environ, str(tmp_path))
        helpers.append(helper)
        return helper

    yield start
    for helper in helpers:
        helper.close()


@pytest.fixture
def spawn_original(tmp_path, stubs, lock_name):
    """The original helper (Samba's, on python-etcd), as ctdbd would run it."""
    if not os.path.exists(ORIGINAL):
        pytest.fail("the original helper %s is missing: install Debian's ctdb and "
                    "python3-etcd (tests/setup does)" % ORIGINAL)
    helpers = []

    def start(etcd, lock_ttl=3, lock_refresh=1):
        base = tmp_path / ("original-%d" % len(helpers))
        base.mkdir()
        # Its parser takes no blank lines or comments, and int() or a string
        # (so no fractions of a second).
        write_config(str(base / "etcd"), {"port": etcd.port, "lock_ttl": lock_ttl,
                                          "lock_refresh": lock_refresh})
        env = dict(os.environ, PATH=stubs + os.pathsep + os.environ["PATH"],
                   CTDB_BASE=str(base), STUB_NETBIOS_NAME=lock_name, STUB_PNN="7")
        helper = Helper([SYSTEM_PYTHON, ORIGINAL], env, str(base))
        helpers.append(helper)
        return helper

    yield start
    for helper in helpers:
        helper.close()


@pytest.fixture
def key(lock_name):
    return "/_locks/_ctdb/" + lock_name
