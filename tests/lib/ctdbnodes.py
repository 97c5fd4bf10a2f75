"""Real ctdbd nodes on this host, their cluster lock kept in etcd by a helper.

A CtdbCluster is N ctdbd daemons in CTDB's test mode, each with a
$CTDB_BASE of its own, a loopback address of its own (127.X.Y.1..N, all on
CTDB's port 4379) and stdin a pipe we hold: ctdbd in test mode exits when
its stdin closes, which is how a node is stopped.  Every node has the same
`cluster lock` line (ctdbd compares it across nodes); the helper's settings
are in each node's $CTDB_BASE/etcd.

    ctdb 4.17  the host's /usr/sbin/ctdbd (Debian 12)
    newer      /usr/sbin/ctdbd in a cached Debian root (make_ctdb_root.sh
               SUITE): trixie's 4.22, trixie-backports' (4.24 when this
               was written) and sid's (4.25); run with chroot in a mount
               namespace of its own (for /proc); the helper is copied into
               the root, and configs hold paths as seen from inside it.

The processes of a node are ctdbd, its recovery daemon (ctdb-recoverd,
the parent of the leader's helper), its event daemon and the helpers: they
can be killed together (a node dies), the daemons alone (the helper is left
an orphan) or the leader's helper alone.
"""

import calendar
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

from etcdmember import read_text, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HELPER = os.path.join(ROOT, "ctdb_etcd_lock.py")
HELPER_BINDIR = "/usr/libexec/ctdb"  # Debian's, for ctdbd's own helpers and daemons
ORIGINAL = HELPER_BINDIR + "/ctdb_etcd_lock"
CTDB_PORT = 4379
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CACHE = os.environ.get("CTDB_ETCD_LOCK_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctdb_etcd_lock")
# The Debian suites make_ctdb_root.sh builds a root of: what each brought.
SUITES = {"trixie": "Debian 13", "trixie-backports": "Debian 13's backports",
          "sid": "Debian unstable"}


def suite_root_path(suite):
    return os.path.join(CACHE, suite + "-root")


def ctdb_root(suite):
    """(root, None) if the root of that Debian suite is built, else (None,
    why not)."""
    root = suite_root_path(suite)
    if not os.path.exists(root + ".complete"):
        return None, ("no root with %s's ctdb in %s: tests/run builds it with debootstrap "
                      "(tests/lib/make_ctdb_root.sh %s; needs root and network)"
                      % (SUITES[suite], root, suite))
    if os.geteuid() != 0:
        return None, "ctdb in a root runs with chroot, which needs root"
    return root, None


def trixie_root():
    """(root, None) if the Debian 13 root (ctdb 4.22) is built, else (None, why not)."""
    return ctdb_root("trixie")


def ctdb_version(root="/"):
    """'4.17', '4.22', ... of the ctdbd in root."""
    status = os.path.join(root, "var/lib/dpkg/status")
    with open(status, encoding="utf-8", errors="replace") as f:
        text = f.read()
    match = re.search(r"^Package: ctdb\n(?:[^\n]+\n)*?Version: (?:\d+:)?(\d+\.\d+)", text, re.M)
    return match.group(1) if match else "?"


# ---------------------------------------------------------------------------
# Processes, as /proc shows them

def processes():
    """{pid: (ppid, comm, cmdline args)} of every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
            with open("/proc/%s/cmdline" % name, "rb") as f:
                args = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue  # a zombie is gone as far as etcd and ctdbd are concerned
        table[int(name)] = (int(fields[1]), comm, args)
    return table


def descendants(pid, table):
    """pid's children, their children, ..."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (ppid, _, _) in table.items() if ppid == parent]
        found += children
        todo += children
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def kill(pids, signum=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def environ_has(pid, entry):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return entry.encode() in f.read().split(b"\0")
    except OSError:
        return False


# ---------------------------------------------------------------------------

class Node:
    """One ctdbd with its $CTDB_BASE (``base`` on the host, ``base_inside``
    as ctdbd sees it)."""

    def __init__(self, cluster, pnn, address):
        self.cluster = cluster
        self.pnn = pnn
        self.address = address
        self.base = os.path.join(cluster.top, "n%d" % pnn)
        self.base_inside = cluster.inside(self.base)
        self.pid = None  # ctdbd's
        self.stdin = None  # the pipe ctdbd reads: closed, it exits

    def __repr__(self):
        return "<node %d %s %s>" % (self.pnn, self.address,
                                    "up" if self.running() else "down")

    @property
    def log_path(self):
        return os.path.join(self.base, "log.ctdb")

    def env(self):
        # ctdb 4.25 in test mode runs its daemons (ctdb-eventd, ...) from
        # CTDB_TEST_HELPER_BINDIR and aborts without it; older ones use
        # their built-in directory, Debian's, and ignore it.
        return {"PATH": self.cluster.inside(self.cluster.shim) + ":" + CLEAN_PATH,
                "CTDB_TEST_MODE": "yes", "CTDB_BASE": self.base_inside, "LANG": "C.UTF-8",
                "CTDB_TEST_HELPER_BINDIR": HELPER_BINDIR}

    def setup(self):
        for sub in ("run", "var", "events/legacy", "db/volatile", "db/persistent", "db/state"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        with open(os.path.join(self.base, "nodes"), "w") as f:
            f.write("".join(node.address + "\n" for node in self.cluster.nodes))
        inside = self.base_inside
        with open(os.path.join(self.base, "ctdb.conf"), "w") as f:
            f.write("[logging]\n\tlocation = file:%s/log.ctdb\n\tlog level = INFO\n\n"
                    "[cluster]\n\tcluster lock = %s\n\tnode address = %s\n\n"
                    "[database]\n\tvolatile database directory = %s/db/volatile\n"
                    "\tpersistent database directory = %s/db/persistent\n"
                    "\tstate database directory = %s/db/state\n\n"
                    "[failover]\n\tdisabled = true\n"
                    % (inside, self.cluster.lock_line, self.address, inside, inside, inside))
        with open(os.path.join(self.base, "etcd"), "w") as f:
            # Plain key = value lines: the original's parser takes nothing else.
            f.write("".join("%s = %s\n" % item for item in self.cluster.settings.items()))

    # -- life and death ------------------------------------------------------

    def start(self):
        """Start ctdbd with a stdin we hold; returns once it has forked its
        daemon (ctdbd.pid written)."""
        assert not self.running(), self
        pidfile = os.path.join(self.base, "run", "ctdbd.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)  # a killed node's, stale
        ctdbd = ["/usr/sbin/ctdbd"]
        env = self.env()
        root = self.cluster.root
        if root == "/":
            argv = ctdbd
        else:
            # A mount namespace of its own, so /proc can be mounted in the
            # root for this node alone and vanishes with it.
            argv = (["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                     'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/bin/env -i "$@"',
                     root] + ["%s=%s" % item for item in env.items()] + ctdbd)
            env = {"PATH": CLEAN_PATH}
        # The daemon inherits the pipe's reading end; we keep the writing
        # end, so it runs until we close it (or it is killed).
        with open(os.path.join(self.base, "ctdbd.out"), "ab") as out:
            starter = subprocess.Popen(argv, env=env, cwd=self.base, stdin=subprocess.PIPE,
                                       stdout=out, stderr=out)
        self.stdin = starter.stdin
        try:
            starter.wait(20)
        except subprocess.TimeoutExpired:
            starter.kill()
            starter.wait()
        self.pid = int(wait_for(lambda: read_text(pidfile), 10,
                                "node %d's ctdbd.pid (see %s)" % (self.pnn, self.log_path)))
        return self

    def running(self):
        return self.pid is not None and alive(self.pid)

    def wait_started(self, timeout=20):
        wait_for(lambda: not self.running() or self.ctdb_ok("pnn"), timeout,
                 "node %d to answer" % self.pnn)
        assert self.running(), "node %d exited at start; see %s" % (self.pnn, self.log_path)

    def pids(self):
        """{'ctdbd': pid, 'ctdb-recoverd': pid, 'ctdb-eventd': pid, 'helpers': [...]}."""
        if not self.running():
            return {"helpers": []}
        table = processes()
        found = {"ctdbd": self.pid, "helpers": [], "all": [self.pid]}
        for pid in descendants(self.pid, table):
            ppid, comm, args = table[pid]
            found["all"].append(pid)
            if self.cluster.helper_inside in args:
                found["helpers"].append(pid)
            elif comm in ("ctdb-recoverd", "ctdb_recoverd", "ctdb-eventd"):
                found[comm.replace("_", "-")] = pid  # 4.17 names it ctdb_recoverd
        return found

    def leader_helper(self):
        """The pid of the helper holding (or taking) the lock for this node's
        recovery daemon, or None."""
        pids = self.pids()
        recoverd = pids.get("ctdb-recoverd")
        table = processes()
        for pid in pids["helpers"]:
            if pid in table and table[pid][0] == recoverd:
                return pid
        return None

    def kill(self):
        """The whole node dies at once: ctdbd, its daemons and its helpers."""
        pids = self.pids().get("all", [])
        kill(pids, signal.SIGSTOP)  # none of them sees another go first
        kill(pids)
        self._gone(pids)
        return pids

    def kill_daemons(self):
        """ctdbd and its recovery and event daemons die; helpers live on as
        orphans.  Returns the helpers' pids and the monotonic time of the kill."""
        pids = self.pids()
        daemons = [pids[name] for name in ("ctdbd", "ctdb-recoverd", "ctdb-eventd")
                   if name in pids]
        kill(daemons, signal.SIGSTOP)
        kill(daemons)
        killed = time.monotonic()
        self._gone(daemons)
        return pids["helpers"], killed

    def kill_helper(self):
        """SIGKILL the helper of this node's recovery daemon (the leader's
        helper, on the leader); returns its pid and the time of the kill."""
        helper = self.leader_helper()
        assert helper is not None, "node %d runs no helper for its recovery daemon" % self.pnn
        os.kill(helper, signal.SIGKILL)
        return helper, time.monotonic()

    def stop(self, timeout=10):
        """ctdbd in test mode exits when its stdin closes."""
        if not self.running():
            return
        pids = self.pids()["all"]
        self.stdin.close()
        try:
            wait_for(lambda: not self.running(), timeout, "node %d to stop" % self.pnn)
        except AssertionError:
            pass
        kill(pids)
        self._gone(pids)

    def _gone(self, pids):
        wait_for(lambda: not any(alive(pid) for pid in pids), 10,
                 "node %d's processes to be gone" % self.pnn)
        if self.stdin:
            self.stdin.close()

    # -- asking it -----------------------------------------------------------

    def ctdb(self, *args, timeout=2):
        """(exit status, output) of the ctdb tool of the node's own version."""
        argv = ["/usr/bin/ctdb"] + list(args)
        env = self.env()
        if self.cluster.root != "/":
            argv = (["chroot", self.cluster.root, "/usr/bin/env", "-i"]
                    + ["%s=%s" % item for item in env.items()] + argv)
            env = {"PATH": CLEAN_PATH}
        try:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            return None, "timed out"
        return done.returncode, done.stdout.decode("utf-8", "replace")

    def ctdb_ok(self, *args):
        status, output = self.ctdb(*args)
        return output if status == 0 else None

    def leader(self):
        """`ctdb leader`: the pnn this node takes for the leader, or None."""
        output = self.ctdb_ok("leader")
        output = (output or "").strip()
        return int(output) if output.isdigit() else None

    def status(self):
        """`ctdb status`, parsed: {'nodes': {pnn: flags}, 'recovery mode', 'leader'}."""
        output = self.ctdb_ok("status")
        if output is None:
            return None
        nodes = {int(pnn): flags.split(" (")[0].strip() for pnn, flags in
                 re.findall(r"^pnn:(\d+) \S+\s+(.*)$", output, re.M)}
        mode = re.search(r"^Recovery mode:(\w+)", output, re.M)
        leader = re.search(r"^(?:Leader|Recovery master):(\d+)", output, re.M)
        return {"nodes": nodes, "recovery mode": mode.group(1) if mode else None,
                "leader": int(leader.group(1)) if leader else None}

    def log(self, offset=0):
        """The node's log (from byte ``offset`` on)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0


class CtdbCluster:
    """N ctdbd nodes sharing one etcd (an etcdmember.Etcd) for their cluster lock.

    helper: "ours" (the checkout's ctdb_etcd_lock.py, or ``helper_path``),
    or "original" (Samba's /usr/libexec/ctdb/ctdb_etcd_lock of the node's
    version; it needs v2).  settings: the helper's $CTDB_BASE/etcd.
    """

    def __init__(self, workdir, etcd, settings, root="/", helper="ours", helper_path=HELPER,
                 size=3, verbose="-v"):
        self.etcd = etcd
        self.root = root
        self.helper = helper
        self.lock_name = "CT" + uuid.uuid4().hex[:10].upper()
        self.key = "/_locks/_ctdb/" + self.lock_name
        self.settings = dict(host="127.0.0.1", port=etcd.port)
        self.settings.update(settings)
        if root == "/":
            self.top = os.path.join(workdir, "ctdb")
        else:
            # ctdbd sees only the root: the nodes' dirs, and the helper, live in it.
            self.top = os.path.join(root, "ctdb-tests", os.path.basename(workdir.rstrip("/"))
                                    + "-" + uuid.uuid4().hex[:6])
        os.makedirs(self.top)
        self.shim = os.path.join(self.top, "shim")
        if helper == "ours":
            if root != "/":
                shutil.copy(helper_path, os.path.join(self.top, "ctdb_etcd_lock.py"))
                helper_path = os.path.join(self.top, "ctdb_etcd_lock.py")
            self.helper_inside = self.inside(helper_path)
            self.lock_line = "!/usr/bin/python3 %s %s" % (self.helper_inside, verbose)
        else:
            self.helper_inside = ORIGINAL
            self.lock_line = "!%s %s" % (ORIGINAL, verbose)
        self.nodes = [Node(self, pnn, address) for pnn, address in enumerate(free_addresses(size))]
        self.version = ctdb_version(root)

    def inside(self, path):
        """path as ctdbd sees it."""
        if self.root == "/":
            return path
        return "/" + os.path.relpath(path, self.root)

    def setup(self):
        os.makedirs(self.shim, exist_ok=True)
        # Samba's testparm names the lock for the original helper (and for
        # ours, which asks it too when lock_name is not set).
        testparm = os.path.join(self.shim, "testparm")
        with open(testparm, "w") as f:
            f.write("#!/bin/sh\necho %s\n" % self.lock_name)
        os.chmod(testparm, 0o755)
        for node in self.nodes:
            node.setup()
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    # -- the cluster as a whole ---------------------------------------------

    def start(self, timeout=60):
        """Start every node; return once the cluster is healthy with a leader."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_started()
        return self.wait_healthy(timeout)

    def live(self):
        return [node for node in self.nodes if node.running()]

    def healthy(self):
        """The leader's pnn when every running node agrees on a running
        leader, says OK for every running node and recovery mode NORMAL."""
        live = self.live()
        leaders = {node.leader() for node in live}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if leader is None or not self.nodes[leader].running():
            return None
        for node in live:
            status = node.status()
            if status is None or status["recovery mode"] != "NORMAL":
                return None
            if any(status["nodes"].get(other.pnn) != "OK" for other in live):
                return None
        return leader

    def wait_healthy(self, timeout=60):
        def leader():
            pnn = self.healthy()
            return None if pnn is None else [pnn]  # pnn 0 is an answer too
        return wait_for(leader, timeout, "a healthy cluster with a leader")[0]

    def leader_holding(self, not_helper=None):
        """(pnn, helper pid) once etcd names as the holder a helper (not
        ``not_helper``) of a node's recovery daemon, and that node's
        `ctdb leader` answers itself; else None.

        Only the leader is asked: during an election the recovery daemons
        are busy taking the lock, and `ctdb leader` waits on them."""
        holder = self.holder()
        if holder is None or holder[0] is None or holder[0] >= len(self.nodes):
            return None
        node = self.nodes[holder[0]]
        if not node.running():
            return None
        helper = node.leader_helper()
        if helper is None or helper == not_helper or holder[1] not in (None, helper):
            return None
        if node.leader() != node.pnn:
            return None
        return node.pnn, helper

    def wait_leader(self, timeout, not_helper=None):
        """leader_holding(), waited for; also (pnn, helper, seconds waited)."""
        started = time.monotonic()
        pnn, helper = wait_for(lambda: self.leader_holding(not_helper), timeout,
                               "a leader holding the lock")
        return pnn, helper, time.monotonic() - started

    def holder(self):
        """(pnn, pid or None) of the helper that holds the lock in etcd, or None.

        Ours writes 'host=H pnn=N pid=P id=I' (v3 key, and v2 lock where
        etcd serves v2); the original writes '<uuid>_<pnn>' (v2 only)."""
        values = []
        try:
            if self.helper == "ours" and self.settings.get("api", "auto") != "v2":
                values.append(self.etcd.v3_value(self.key))
            if self.etcd.serves_v2 and (self.helper != "ours"
                                        or self.settings.get("api", "auto") != "v3"):
                values.append(self.etcd.v2_value(self.key))
        except (OSError, ValueError, AssertionError):
            return None
        holders = {parse_holder(value) for value in values}
        if len(holders) != 1:
            return None  # one keyspace held, the other not (yet, or no more)
        return holders.pop()

    def describe(self):
        parts = []
        for node in self.nodes:
            parts.append("n%d %s leader=%s helpers=%s" % (
                node.pnn, "up" if node.running() else "down",
                node.leader() if node.running() else "-", node.pids()["helpers"]))
        return "; ".join(parts) + "; etcd holder %s" % (self.holder(),)

    def logs(self):
        return {node.pnn: node.log() for node in self.nodes}

    def log_sizes(self):
        """{pnn: bytes} of every node's log now: where a later look starts."""
        return {node.pnn: node.log_size() for node in self.nodes}

    def first_logged(self, text, since):
        """(wall-clock time, pnn) of the earliest line holding ``text`` that
        a node logged after ``since`` (log_sizes()), or None."""
        found = []
        for node in self.nodes:
            for line in node.log(since.get(node.pnn, 0)).splitlines():
                stamp = log_time(line)
                if text in line and stamp is not None:
                    found.append((stamp, node.pnn))
        return min(found) if found else None

    def log_problems(self):
        """Lines of any node's log that must never be there."""
        bad = ("able to take recovery lock", "Unexpected error when testing recovery lock",
               "Traceback", "internal error", "Recovery lock configuration inconsistent")
        found = []
        for pnn, text in self.logs().items():
            found += ["n%d: %s" % (pnn, line) for line in text.splitlines()
                      if any(b in line for b in bad)]
        return found

    def teardown(self):
        """Stop every node (all stdins closed at once), kill what is left of
        them and of their helpers, and remove a chroot's node dirs."""
        every = [pid for node in self.nodes for pid in node.pids().get("all", [])]
        for node in self.nodes:
            if node.stdin:
                node.stdin.close()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in every) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill(every)
        # Orphaned helpers (and anything else) still carrying a node's CTDB_BASE.
        for _ in range(50):
            strays = [pid for pid in processes() if any(
                environ_has(pid, "CTDB_BASE=" + node.base_inside) for node in self.nodes)]
            strays += [pid for pid in every if alive(pid)]
            if not strays:
                break
            kill(strays)
            time.sleep(0.1)
        if self.root != "/":
            for _ in range(20):
                shutil.rmtree(self.top, ignore_errors=True)
                if not os.path.exists(self.top):
                    break
                time.sleep(0.1)


LOG_STAMP = re.compile(r"(\d{4})[-/](\d\d)[-/](\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?"
                       r"(Z|[+-]\d\d:?\d\d)?")


def log_time(line):
    """The wall-clock time (seconds since the epoch) at the start of a ctdbd
    log line (2026-12-05T20:10:31.123456+00:00, or local time without an
    offset), or None."""
    match = LOG_STAMP.match(line)
    if not match:
        return None
    fields = [int(match.group(i)) for i in range(1, 7)]
    fraction = float(match.group(7) or 0)
    zone = match.group(8)
    if zone is None:
        return time.mktime(tuple(fields) + (0, 0, -1)) + fraction
    offset = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * 60 * (-1 if zone[0] == "-" else 1)
    return calendar.timegm(tuple(fields) + (0, 0, 0)) + fraction - offset


def parse_holder(value):
    if not value:
        return None
    ours = re.match(r"host=\S* pnn=(\d+|\?) pid=(\d+)", value)
    if ours:
        return (int(ours.group(1)) if ours.group(1).isdigit() else None, int(ours.group(2)))
    original = re.search(r"_(\d+)$", value)
    if original:
        return int(original.group(1)), None
    return None


def free_addresses(size):
    """size loopback addresses 127.X.Y.1..size on which CTDB's port is free,
    X and Y at random: runs side by side do not collide."""
    for _ in range(50):
        prefix = "127.%d.%d." % (random.randint(1, 254), random.randint(1, 254))
        addresses = [prefix + str(i + 1) for i in range(size)]
        if all(port_free(address) for address in addresses):
            return addresses
    raise RuntimeError("no free loopback addresses for ctdbd")


def port_free(address):
    with socket.socket() as s:
        try:
            s.bind((address, CTDB_PORT))
            return True
        except OSError:
            return False
