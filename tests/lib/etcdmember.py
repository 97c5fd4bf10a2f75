"""Real etcd members for tests and benchmarks: start one on free loopback
ports in a directory of its own, look at what it holds, pause it, stop it;
or start a cluster of several members and do the same through any of them.

Flavours (whichever is not the system's etcd-server comes from fetch_etcd):
    etcd34     Debian 12's etcd 3.4, with --enable-v2 (v2 and v3 served)
    etcd35     Debian 13's etcd 3.5, v2 off as by default (v3 only)
    etcd35new  the newest etcd 3.5 (at least 3.5.28), built from Go modules (v3 only)
    etcd36     the newest etcd 3.6, built (no v2 at all: --enable-v2 stops it)
    etcd37     the newest etcd 3.7, built (no v2)
    etcd368    etcd 3.6.8, built: one of the 3.6 releases (3.6.0-3.6.11) that refuse
               /v3/maintenance/status to users without the root role
MAIN_FLAVOURS, Debian's, are those the suite's parametrized tests run on;
NEWER_FLAVOURS those tests/test_versions.py runs the cheap behaviours on.

    start_etcd(flavour, workdir)            -> Etcd, one member of its own cluster
    start_cluster(flavour, workdir, size=3) -> Cluster of `size` members
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import fetch_etcd

# flavour -> (what fetch_etcd fetches: a Debian suite or an etcd line, v2 on)
FLAVOURS = {"etcd34": ("bookworm", True), "etcd35": ("trixie", False),
            "etcd35new": ("3.5", False), "etcd36": ("3.6", False), "etcd37": ("3.7", False),
            "etcd368": ("3.6.8", False)}
MAIN_FLAVOURS = ["etcd34", "etcd35"]
NEWER_FLAVOURS = ["etcd35new", "etcd36", "etcd37"]


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


def read_text(path):
    """The file's text, or '' while it does not exist."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count):
    """count distinct free ports (all bound at once, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------------------
# What a test reads and writes on etcd, over self.http()

class Client:
    """A tiny client for checking what etcd holds; subclasses give http()."""

    def http(self, method, path, body=None, headers=None, timeout=None):
        raise NotImplementedError

    def v2(self, method, key, **params):
        query = "?" + urllib.parse.urlencode(params) if params and method in ("GET", "DELETE") else ""
        body = urllib.parse.urlencode(params).encode() if params and not query else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        status, data = self.http(method, "/v2/keys" + urllib.parse.quote(key) + query,
                                 body, headers)
        return status, json.loads(data)

    def v2_entries(self, key):
        """The lock's queue (the original's recipe): entries, first by name first."""
        status, data = self.v2("GET", key, quorum="true")
        if status != 200 or not data["node"].get("dir"):
            return []
        return sorted(data["node"].get("nodes") or [], key=lambda node: node["key"])

    def v2_value(self, key):
        """The value of whoever holds the v2 lock: the first entry, or a plain key."""
        status, data = self.v2("GET", key, quorum="true")
        if status != 200:
            return None
        if not data["node"].get("dir"):
            return data["node"].get("value")
        entries = self.v2_entries(key)
        return entries[0]["value"] if entries else None

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

    def cluster_id(self):
        """In hex, as the v2 X-Etcd-Cluster-Id header (and python-etcd) give it."""
        return format(int(self.v3("/kv/range", {"key": b64("x")})["header"]["cluster_id"]), "x")

    def leases(self):
        return [lease["ID"] for lease in self.v3("/lease/leases", {}).get("leases") or []]

    def value(self, api, key):
        return self.v2_value(key) if api == "v2" else self.v3_value(key)

    def left(self, api, key):
        """Whole seconds until the holder's TTL runs out, as etcd counts them
        (v2: the first entry's; v3: the key's lease); None if nobody holds."""
        if api == "v2":
            entries = self.v2_entries(key)
            return entries[0]["ttl"] if entries else None
        kv = self.v3_kv(key)
        if kv is None:
            return None
        return int(self.v3("/lease/timetolive", {"ID": kv["lease"]})["TTL"])


# ---------------------------------------------------------------------------
# etcd members

class Etcd(Client):
    """One etcd member in a temp dir; a tiny client for checking what it holds."""

    built_alike = False  # True: etcd's default identity (every such cluster has one id)

    def __init__(self, binary, v2, workdir):
        self.binary = binary
        self.serves_v2 = v2
        self.workdir = workdir
        self.proc = None
        self.port = None
        self.paused = False

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        for _ in range(5):
            self.port, peer = free_port(), free_port()
            argv = [self.binary, "--data-dir", os.path.join(self.workdir, "data"),
                    "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                    "--listen-peer-urls", "http://127.0.0.1:%d" % peer]
            if not self.built_alike:  # else etcd's defaults: name, peer URL, cluster
                argv += ["--name", "m0",
                         "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
                         "--initial-cluster", "m0=http://127.0.0.1:%d" % peer]
            if self.serves_v2:
                argv.append("--enable-v2")
            argv += self.more_arguments()
            log = open(os.path.join(self.workdir, "etcd.log"), "ab")
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            self.paused = False
            try:
                wait_for(lambda: self.proc.poll() is not None or self.healthy(), 20,
                         "etcd (%s) to become healthy" % self.url)
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            shutil.rmtree(os.path.join(self.workdir, "data"), ignore_errors=True)
        raise RuntimeError("etcd would not start; see %s/etcd.log" % self.workdir)

    def more_arguments(self):
        """What a member of another kind adds to etcd's command line."""
        return []

    def healthy(self, timeout=5):
        try:
            return json.loads(self.http("GET", "/health", timeout=timeout)[1]).get(
                "health") == "true"
        except (OSError, ValueError):
            return False

    def running(self):
        """Started and not exited (a paused member is running)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.paused = False

    def kill(self):
        """SIGKILL: gone at once, as on a crash (its data dir stays)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def status(self, timeout=5):
        """POST /v3/maintenance/status: header (cluster_id, member_id), leader, ..."""
        status, data = self.http("POST", "/v3/maintenance/status", b"{}",
                                 {"Content-Type": "application/json"}, timeout=timeout)
        assert status == 200, (self.url, status, data)
        return json.loads(data)

    # -- plain HTTP, as a test's own eyes on the server --------------------

    def http(self, method, path, body=None, headers=None, timeout=5):
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def b64(text):
    return base64.b64encode(text.encode()).decode()


def start_etcd(flavour, workdir, v2=None, built_alike=False):
    """One member of its own cluster.  ``built_alike``: with etcd's default
    name, peer URL and cluster token, so that every member so started has
    the same cluster id and member id, as strays set up from a package's
    defaults do."""
    which, default_v2 = FLAVOURS[flavour]
    binary = fetch_etcd.etcd_binary(which)
    member = Etcd(binary, default_v2 if v2 is None else v2, workdir)
    member.built_alike = built_alike
    return member.start()


# ---------------------------------------------------------------------------
# Clusters of several members

class ClusterMember(Etcd):
    """A member of a Cluster: its ports and data dir are fixed when the
    cluster is made, so it can be stopped (or killed) and started again."""

    def __init__(self, binary, v2, workdir, name, port, peer_port, initial_cluster, token,
                 heartbeat_ms, election_ms, advertised_peer_port=None):
        Etcd.__init__(self, binary, v2, workdir)
        self.name = name
        self.port = port
        self.peer_port = peer_port
        # Where the peers reach it: a proxy's port, or its own.
        self.advertised_peer_port = advertised_peer_port or peer_port
        self.initial_cluster = initial_cluster
        self.token = token
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.member_id = None  # as etcd's JSON gives it (a decimal string), once known

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def argv(self):
        argv = [self.binary, "--name", self.name,
                "--data-dir", os.path.join(self.workdir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:%d" % self.advertised_peer_port,
                "--initial-cluster", self.initial_cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms)]
        if self.serves_v2:
            argv.append("--enable-v2")
        return argv

    def launch(self):
        """Start the process; do not wait (a lone member of a new cluster
        is not healthy before a quorum of its peers is up)."""
        os.makedirs(self.workdir, exist_ok=True)
        with open(os.path.join(self.workdir, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        self.paused = False

    def start(self, timeout=20):
        """Start again after stop() or kill(): same ports, same data, it rejoins."""
        if self.running():
            return self
        self.launch()
        wait_for(lambda: self.proc.poll() is not None or self.healthy(timeout=1), timeout,
                 "etcd member %s to be healthy again" % self.name)
        if self.proc.poll() is not None:
            raise RuntimeError("etcd member %s would not start again; see %s/etcd.log"
                               % (self.name, self.workdir))
        return self

    def is_leader(self, timeout=1):
        """True if this member says it leads; None if it cannot say."""
        try:
            status = self.status(timeout=timeout)
        except (OSError, ValueError, AssertionError):
            return None
        self.member_id = status["header"]["member_id"]
        return int(status["header"]["member_id"]) == int(status.get("leader") or 0)

    def __repr__(self):
        state = ("paused" if self.paused else "running") if self.running() else "stopped"
        return "<etcd member %s %s %s>" % (self.name, self.url, state)


class Cluster(Client):
    """Several members on loopback; reads and writes (the Client methods:
    value, v2_entries, v3_value, leases, ...) go through any live member,
    failing over on errors, timeouts and 5xx answers, until ``timeout``.

    A write retried on another member may have been applied twice: fine
    for puts and deletes, not for v2 POSTs (in-order keys)."""

    timeout = 10.0  # the longest one read or write through the cluster may take
    member_timeout = 2.0  # the longest one try on one member may take

    def __init__(self, flavour, members):
        self.flavour = flavour
        self.members = members
        self.serves_v2 = members[0].serves_v2
        self._last = members[0]

    def live(self):
        """Members running and not paused."""
        return [m for m in self.members if m.running() and not m.paused]

    def http(self, method, path, body=None, headers=None, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        errors = []
        while True:
            live = self.live()
            if self._last in live:  # start with the member that answered last
                i = live.index(self._last)
                live = live[i:] + live[:i]
            for member in live:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    status, data = member.http(method, path, body, headers,
                                               timeout=min(self.member_timeout, left))
                except OSError as e:
                    errors.append("%s: %s" % (member.name, e))
                    continue
                if status >= 500:
                    errors.append("%s: %d %s" % (member.name, status, data[:200]))
                    continue
                self._last = member
                return status, data
            if time.monotonic() >= deadline:
                raise AssertionError("no member of the cluster answered %s %s within %.1fs: %s"
                                     % (method, path, timeout or self.timeout,
                                        "; ".join(errors[-6:]) or "none live"))
            time.sleep(0.1)

    def leader(self, timeout=10):
        """The live member that says it leads (waits for an election)."""
        def find():
            for member in self.live():
                if member.is_leader():
                    return member
            return None
        return wait_for(find, timeout, "a leader among %s" % self.live())

    def followers(self, timeout=10):
        """The live members but the leader."""
        leader = self.leader(timeout)
        return [m for m in self.live() if m is not leader]

    def hosts(self, members=None):
        """The comma list form of `host`: '127.0.0.1:P1, 127.0.0.1:P2, ...'."""
        return ", ".join("127.0.0.1:%d" % m.port for m in members or self.members)

    def host_tuples(self, members=None):
        """python-etcd's form of `host`: "(('127.0.0.1', P1), ('127.0.0.1', P2))"."""
        return "(%s)" % ", ".join("('127.0.0.1', %d)" % m.port for m in members or self.members)

    def endpoints(self, members=None):
        """etcdctl's form, for `endpoints`: 'http://127.0.0.1:P1, http://...'."""
        return ", ".join(m.url for m in members or self.members)

    def stop(self):
        """Every member at once, with SIGKILL: the data is thrown away, and a
        graceful stop of all would have the leader try for seconds to hand
        its leadership to peers that are going too."""
        for member in self.members:
            member.kill()

    def __repr__(self):
        return "<%s cluster %s>" % (self.flavour, self.members)


def start_cluster(flavour, workdir, size=3, v2=None, heartbeat_ms=50, election_ms=500,
                  peer_proxies=None):
    """A new cluster of `size` members of one flavour, each on free loopback
    ports with a data dir of its own under workdir; returns once every
    member is healthy (a leader elected), usually within a second.  Stop
    it with Cluster.stop().

    ``v2``: whether the members serve v2 (the flavour's default), or a list
    of that for each member.  ``peer_proxies``: {member index: start(port)},
    where start returns a proxy (with a ``port``) before that member's peer
    port, which the member advertises instead of its own.

    The election timeout is half etcd's default (1000 ms): the tests hold
    3-second locks, and a leader's loss must be over well within one."""
    which, default_v2 = FLAVOURS[flavour]
    binary = fetch_etcd.etcd_binary(which)
    v2 = default_v2 if v2 is None else v2
    serves_v2 = v2 if isinstance(v2, (list, tuple)) else [v2] * size
    for attempt in range(3):
        ports = free_ports(2 * size)
        names = ["m%d" % i for i in range(size)]
        advertised = [ports[2 * i + 1] for i in range(size)]
        for index, start_proxy in (peer_proxies or {}).items():
            advertised[index] = start_proxy(ports[2 * index + 1]).port
        initial = ",".join("%s=http://127.0.0.1:%d" % (name, advertised[i])
                           for i, name in enumerate(names))
        token = "test-" + uuid.uuid4().hex
        members = [ClusterMember(binary, serves_v2[i],
                                 os.path.join(workdir, "try%d-%s" % (attempt, name)),
                                 name, ports[2 * i], ports[2 * i + 1], initial, token,
                                 heartbeat_ms, election_ms, advertised[i])
                   for i, name in enumerate(names)]
        cluster = Cluster(flavour, members)
        for member in members:
            member.launch()
        healthy = set()

        def all_healthy():
            for member in members:
                if member.proc.poll() is not None:
                    return "exited"
                if member not in healthy and member.healthy(timeout=1):
                    healthy.add(member)
            return len(healthy) == len(members)
        try:
            outcome = wait_for(all_healthy, 30, "%d %s members to be healthy" % (size, flavour))
        except AssertionError:
            cluster.stop()
            raise
        if outcome is True:
            for member in members:  # member ids, for leader()
                member.is_leader()
            return cluster
        cluster.stop()  # a port was taken meanwhile, most likely: new ports, new dirs
    raise RuntimeError("etcd cluster would not start; see the etcd.log files under %s"
                       % workdir)
