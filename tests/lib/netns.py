"""The whole system under fire, inside network namespaces of its own:
three etcd members and three "nodes" that run the helper as ctdbd does,
a nemesis that cuts, slows and kills, and a checker that proves no two
nodes ever held the lock at once.  scripts/partition is its command line.

Network.  The tool runs in a network namespace of its own (``unshare -n``),
which is the router: every party (m0, m1, m2: etcd members; n0, n1, n2:
nodes) lives in a named namespace, joined to the router by one veth pair,
10.213.<i>.2 on its side and 10.213.<i>.1 on the router's.  Nothing is in
the machine's own namespace, so nothing can leave the machine.  A partition
is a pair of policy rules on the router (``ip rule ... blackhole``): packets
between two parties are dropped silently, as on a real cut, both ways.  A
slow link is ``tc netem`` (delay and loss) where the kernel has it, else a
``tbf`` rate limit on both ends of the party's veth.

Clock.  Every event is stamped with time.monotonic(), which is one clock for
every namespace of the machine, so the logs of the nodes and the nemesis
merge into one timeline.

    python3 tests/lib/netns.py node ...   the node agent (started by the tool)
"""

import argparse
import collections
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HELPER = os.path.join(ROOT, "ctdb_etcd_lock.py")
sys.path.insert(0, HERE)
from etcdmember import wait_for  # noqa: E402

MEMBERS = ("m0", "m1", "m2")
NODES = ("n0", "n1", "n2")
PARTIES = MEMBERS + NODES
CLIENT_PORT = 2379
PEER_PORT = 2380
LOCK_NAME = "partition"
IN_NETNS = "CTDB_ETCD_LOCK_PARTITION_NETNS"  # set once the tool runs in its own namespace

# Fault kinds the nemesis deals, each once per shuffled deck.
FAULTS = ("node_from_etcd", "member_from_members", "isolate_holder", "quorum_loss",
          "slow_link", "pause_holder", "kill_holder", "kill_member")

# A holder woken after a pause past its TTL must close its stdout within this.
PROMPT_FENCE = 1.0
# Wait this long for a helper's status byte before calling it hung.
STATUS_DEADLINE = 30.0


def address(party):
    return "10.213.%d.2" % PARTIES.index(party)


def run(*argv):
    """Run a command that must work (ip, tc); its error output in the exception."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv),
                                               done.stderr.decode(errors="replace").strip()))
    return done.stdout.decode()


def run_quietly(*argv):
    """Run a command whose failure does not matter (removing what may be gone)."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


# ---------------------------------------------------------------------------
# The network: named namespaces around the tool's own, which routes

class Network:
    """Six named namespaces, each with one veth to the router (our namespace).

    State the checker needs goes through ``on_change(state)`` each time it
    changes: the cut pairs, the slow parties and the members that are down.
    """

    def __init__(self, prefix, on_change):
        self.prefix = prefix
        self.on_change = on_change
        self.made = []  # namespaces created, to remove
        self.cut = set()  # frozenset({a, b}) pairs that cannot talk
        self.slow = set()
        self.down = set()
        self.netem = False

    def namespace(self, party):
        return self.prefix + party

    def netns_path(self, party):
        return "/run/netns/" + self.namespace(party)

    def create(self):
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1\n")
        run("ip", "link", "set", "lo", "up")
        for i, party in enumerate(PARTIES):
            ns = self.namespace(party)
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "link", "add", "h" + party, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            run("ip", "addr", "add", "10.213.%d.1/24" % i, "dev", "h" + party)
            run("ip", "link", "set", "h" + party, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", "10.213.%d.2/24" % i, "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", "10.213.%d.1" % i)
        # netem needs the kernel's sch_netem; without it, slow links are a rate limit.
        self.netem = run_quietly("tc", "qdisc", "add", "dev", "hm0", "root", "netem",
                                 "delay", "1ms")
        run_quietly("tc", "qdisc", "del", "dev", "hm0", "root")
        self.changed()

    def remove(self):
        for ns in self.made:
            run_quietly("ip", "netns", "del", ns)
        self.made = []

    def state(self):
        return {"cut": sorted(sorted(pair) for pair in self.cut),
                "slow": sorted(self.slow), "down": sorted(self.down)}

    def changed(self):
        self.on_change(self.state())

    # -- partitions --------------------------------------------------------

    def _rules(self, verb, a, b):
        for source, target in ((a, b), (b, a)):
            run("ip", "rule", verb, "from", address(source), "to", address(target),
                "blackhole", "pref", "100")

    def partition(self, side, other_side):
        """Cut every party of one side from every party of the other."""
        for a in side:
            for b in other_side:
                pair = frozenset((a, b))
                if a != b and pair not in self.cut:
                    self._rules("add", a, b)
                    self.cut.add(pair)
        self.changed()

    # -- slow links --------------------------------------------------------

    def make_slow(self, party, rng):
        """Delay and loss (netem), or a rate limit (tbf), both ways on its link."""
        if self.netem:
            shape = ["netem", "delay", "%dms" % rng.randint(50, 400), "%dms" % rng.randint(10, 100),
                     "loss", "%d%%" % rng.randint(1, 20)]
        else:
            shape = ["tbf", "rate", "%dkbit" % rng.choice((16, 32, 64)), "burst", "1600",
                     "latency", "2s"]
        run("tc", "qdisc", "replace", "dev", "h" + party, "root", *shape)
        run("tc", "-n", self.namespace(party), "qdisc", "replace", "dev", "eth0", "root", *shape)
        self.slow.add(party)
        self.changed()
        return " ".join(shape)

    def heal(self):
        """Every cut joined and every link back to full speed."""
        for pair in list(self.cut):
            a, b = sorted(pair)
            self._rules("del", a, b)
            self.cut.discard(pair)
        for party in list(self.slow):
            run_quietly("tc", "qdisc", "del", "dev", "h" + party, "root")
            run_quietly("tc", "-n", self.namespace(party), "qdisc", "del", "dev", "eth0", "root")
            self.slow.discard(party)
        self.changed()

    def member_down(self, name, down):
        (self.down.add if down else self.down.discard)(name)
        self.changed()


def remove_stale_namespaces():
    """Namespaces a run killed with SIGKILL left behind (ptn<pid>-*, pid gone)."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        if not name.startswith("ptn") or "-" not in name:
            continue
        pid = name[3:].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists("/proc/" + pid):
            run_quietly("ip", "netns", "del", name)


# ---------------------------------------------------------------------------
# etcd members, each in its namespace

class Member:
    def __init__(self, name, binary, v2, network, workdir, token):
        self.name = name
        self.binary = binary
        self.v2 = v2
        self.network = network
        self.workdir = os.path.join(workdir, name)
        self.token = token
        self.proc = None
        self.member_id = None

    @property
    def url(self):
        return "http://%s:%d" % (address(self.name), CLIENT_PORT)

    def argv(self):
        initial = ",".join("%s=http://%s:%d" % (m, address(m), PEER_PORT) for m in MEMBERS)
        peer = "http://%s:%d" % (address(self.name), PEER_PORT)
        argv = ["nsenter", "--net=" + self.network.netns_path(self.name), "--",
                self.binary, "--name", self.name,
                "--data-dir", os.path.join(self.workdir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", "100", "--election-timeout", "1000"]
        if self.v2:
            argv.append("--enable-v2")
        return argv

    def launch(self):
        os.makedirs(self.workdir, exist_ok=True)
        with open(os.path.join(self.workdir, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.running():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def post(self, path, timeout):
        request = urllib.request.Request(self.url + path, data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())

    def healthy(self, timeout=1.0):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as answer:
                return json.loads(answer.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def leads(self):
        status = self.status(timeout=0.5)
        return bool(status) and status[0] == status[1]

    def status(self, timeout=1.0):
        """(its member id, the leader's id it knows) or None."""
        try:
            status = self.post("/v3/maintenance/status", timeout)
            return status["header"]["member_id"], status.get("leader")
        except (OSError, ValueError, KeyError):
            return None


def leader_of(members):
    """The member most members name as leader (v3 maintenance/status), or None."""
    votes = collections.Counter()
    for member in members:
        status = member.status() if member.running() else None
        if status:
            member.member_id = status[0]
            if status[1] and status[1] != "0":
                votes[status[1]] += 1
    for leader_id, _ in votes.most_common(1):
        for member in members:
            if member.member_id == leader_id:
                return member
    return None


# ---------------------------------------------------------------------------
# A node: runs helpers one after another, as ctdbd does, and logs each step

def node_agent(argv):
    """Take, hold for a random time, SIGTERM; after '1' or '3' try again after
    a short pause.  Every step is one JSON line on stdout with its time."""
    parser = argparse.ArgumentParser(prog="netns.py node")
    parser.add_argument("--name", required=True)
    parser.add_argument("--base", required=True)  # $CTDB_BASE: holds the etcd config
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--hold", type=float, nargs=2, default=(2.0, 12.0))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tool stops us with SIGTERM

    def event(ev, **fields):
        fields.update(t=time.monotonic(), ev=ev, node=args.name)
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    env = {"PATH": os.path.join(args.base, "bin") + ":/usr/sbin:/usr/bin:/sbin:/bin",
           "CTDB_BASE": args.base, "LANG": "C.UTF-8"}
    stderr_log = open(os.path.join(args.base, "helpers.log"), "ab")
    attempt = 0
    while not stopping:
        attempt += 1
        stderr_log.write(b"--- attempt %d\n" % attempt)
        stderr_log.flush()
        helper = subprocess.Popen([HELPER, "-v"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=stderr_log, env=env,
                                  cwd=args.base, bufsize=0)
        event("spawn", pid=helper.pid, attempt=attempt)
        status = read_status(helper, stopping)
        if status is None and stopping:  # the run is over before it answered
            event("sigkill", pid=helper.pid, why="stopping")
            helper.kill()
        else:
            event("status", pid=helper.pid, status=status)
        if status == "0":
            event("held", pid=helper.pid)
            hold(helper, time.monotonic() + rng.uniform(*args.hold), stopping, event)
        elif status is None and not stopping:  # hung: no answer within STATUS_DEADLINE
            event("sigkill", pid=helper.pid, why="no status")
            helper.kill()
        code = helper.wait()
        event("exit", pid=helper.pid, code=code)
        helper.stdout.close()
        if not stopping:
            time.sleep(rng.uniform(0.2, 0.6) if status == "1" else rng.uniform(0.5, 1.5))
    event("stopped")


def read_status(helper, stopping):
    """The status character, '' for EOF before one, None if none came."""
    deadline = time.monotonic() + STATUS_DEADLINE
    while not stopping and time.monotonic() < deadline:
        ready, _, _ = select.select([helper.stdout], [], [], 0.2)
        if ready:
            return os.read(helper.stdout.fileno(), 1).decode()
    return None


def hold(helper, until, stopping, event):
    """Until the hold is over (SIGTERM, as ctdbd on a new election), or the
    helper closes its stdout (it gave the lock up, or died)."""
    terminated = False
    while True:
        left = until - time.monotonic()
        if not terminated and (left <= 0 or stopping):
            event("sigterm", pid=helper.pid)
            helper.send_signal(signal.SIGTERM)
            terminated = True
        ready, _, _ = select.select([helper.stdout], [], [],
                                    0.2 if terminated else min(max(left, 0), 0.2))
        if ready:
            data = os.read(helper.stdout.fileno(), 64)
            if not data:
                event("eof", pid=helper.pid)
                return
            event("stdout", pid=helper.pid, data=data.decode(errors="replace"))


# ---------------------------------------------------------------------------
# One run: the system, the nemesis, the log

class Run:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.events = []
        self.lock = threading.Lock()
        self.log = open(os.path.join(workdir, "events.jsonl"), "w")
        self.holders = {}  # node -> pid of the helper that said '0' and has not ended
        self.helper_pids = set()
        self.paused = set()
        self.agents = {}
        self.readers = []
        self.network = Network("ptn%d-" % os.getpid(),
                               lambda state: self.event("net", **state))
        self.members = []
        self.stopping = threading.Event()

    # -- the log -----------------------------------------------------------

    def event(self, ev, **fields):
        fields.setdefault("t", time.monotonic())
        fields["ev"] = ev
        with self.lock:
            self.events.append(fields)
            self.log.write(json.dumps(fields) + "\n")
            self.log.flush()
            self._follow(fields)

    def _follow(self, e):
        """Who holds the lock now, as the nemesis needs to know."""
        if e["ev"] == "spawn":
            self.helper_pids.add(e["pid"])
        elif e["ev"] == "held":
            self.holders[e["node"]] = e["pid"]
        elif e["ev"] in ("eof", "sigterm", "exit", "sigkill"):
            if self.holders.get(e.get("node")) == e.get("pid"):
                del self.holders[e["node"]]

    def holder(self):
        with self.lock:
            return next(iter(self.holders.items()), (None, None))

    def await_holder(self, timeout=None):
        """The holder, waiting a while for one: (node, pid), or (None, None)."""
        deadline = time.monotonic() + (timeout or 2 * self.args.lock_ttl + 5)
        while self.holder()[1] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.holder()

    def read_agent(self, node, stream):
        for line in stream:
            try:
                fields = json.loads(line)
            except ValueError:
                fields = {"t": time.monotonic(), "ev": "garbage", "node": node,
                          "line": line.decode(errors="replace")[:200]}
            self.event(fields.pop("ev"), **fields)
        self.event("agent_gone", node=node)

    # -- start and stop ----------------------------------------------------

    def start(self):
        import fetch_etcd
        from etcdmember import FLAVOURS
        which, v2 = FLAVOURS[self.args.flavour]
        binary = fetch_etcd.etcd_binary(which)
        self.event("run", flavour=self.args.flavour, api=self.args.api,
                   lock_ttl=self.args.lock_ttl, seed=self.args.seed, minutes=self.args.minutes,
                   free_limit=self.args.free_limit, prompt_fence=PROMPT_FENCE,
                   wall=time.time())  # to read the etcd logs (wall clock) beside ours
        self.network.create()
        self.event("netem", available=self.network.netem)
        token = "partition-" + uuid.uuid4().hex
        self.members = [Member(name, binary, v2, self.network, self.workdir, token)
                        for name in MEMBERS]
        for member in self.members:
            member.launch()
        wait_for(lambda: all(m.healthy() for m in self.members), 60,
                   "the three etcd members to be healthy")
        for i, node in enumerate(NODES):
            self.start_agent(i, node)
        watch = threading.Thread(target=self.watch_leaders, daemon=True)
        watch.start()
        self.readers.append(watch)

    def watch_leaders(self):
        """Which members say they lead, asked every 0.25 s over the router's
        own links (no fault cuts those): logged when it changes."""
        known = None
        while not self.stopping.is_set():
            leaders = sorted(m.name for m in self.members if m.running() and m.leads())
            if leaders != known:
                self.event("leaders", members=leaders)
                known = leaders
            self.stopping.wait(0.25)

    def start_agent(self, pnn, node):
        base = os.path.join(self.workdir, node)
        os.makedirs(os.path.join(base, "bin"))
        ctdb = os.path.join(base, "bin", "ctdb")  # `ctdb pnn`, which names the holder
        with open(ctdb, "w") as f:
            f.write("#!/bin/sh\necho %d\n" % pnn)
        os.chmod(ctdb, 0o755)
        with open(os.path.join(base, "etcd"), "w") as f:
            f.write("endpoints = %s\nlock_ttl = %d\nrefresh = 1\nlock_name = %s\napi = %s\n"
                    % (", ".join(m.url for m in self.members), self.args.lock_ttl,
                       LOCK_NAME, self.args.api))
        with open(os.path.join(base, "agent.log"), "ab") as agent_log:
            agent = subprocess.Popen(
                ["nsenter", "--net=" + self.network.netns_path(node), "--",
                 sys.executable, os.path.abspath(__file__), "node", "--name", node,
                 "--base", base, "--seed", str(self.rng.randrange(1 << 30))],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=agent_log,
                start_new_session=True)
        self.agents[node] = agent
        reader = threading.Thread(target=self.read_agent, args=(node, agent.stdout), daemon=True)
        reader.start()
        self.readers.append(reader)

    def stop(self):
        """Everything we started, whatever state it is in."""
        self.event("teardown")
        self.stopping.set()
        for pid in list(self.paused):
            signal_quietly(pid, signal.SIGCONT)
        for agent in self.agents.values():
            if agent.poll() is None:
                agent.terminate()
        for agent in self.agents.values():
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        for reader in self.readers:
            reader.join(5)
        for pid in list(self.helper_pids):  # a helper whose agent was killed
            if is_helper(pid):
                signal_quietly(pid, signal.SIGCONT)
                signal_quietly(pid, signal.SIGKILL)
        for member in self.members:
            member.kill()
        self.network.remove()
        self.event("stopped")
        self.log.close()

    # -- the nemesis -------------------------------------------------------

    def nemesis(self):
        """Faults at random, one at a time, healed before the next."""
        ttl = self.args.lock_ttl
        wait_for(lambda: self.holder()[0] or None, 60, "a first holder")
        self.event("nemesis_start")
        end = time.monotonic() + self.args.minutes * 60
        deck = []
        while time.monotonic() < end:
            # One fault at a time: the last one's aftermath (a dead holder's
            # lease running out, renewed by each new etcd leader) is over
            # once a node holds the lock again.
            self.await_holder(3 * ttl + 10)
            time.sleep(self.rng.uniform(1.0, 3.0))
            if not deck:
                deck = list(FAULTS)
                self.rng.shuffle(deck)
            kind = deck.pop()
            getattr(self, kind)(ttl)
            self.network.heal()
            self.restart_members()
        self.event("nemesis_end")
        time.sleep(ttl + 3)  # the last fault's aftermath is in the window too

    def fault(self, kind, **detail):
        self.event("fault", kind=kind, **detail)

    def hold_fault(self, low, high):
        time.sleep(self.rng.uniform(low, high))

    def node_from_etcd(self, ttl):
        node = self.rng.choice(NODES)
        self.fault("node_from_etcd", node=node, holder=self.holder()[0] == node)
        self.network.partition([node], MEMBERS)
        self.hold_fault(1, 2 * ttl)

    def member_from_members(self, ttl):
        leader = leader_of(self.members)
        member = leader if leader and self.rng.random() < 0.5 else self.rng.choice(self.members)
        self.fault("member_from_members", member=member.name, leader=member is leader)
        self.network.partition([member.name], [m for m in MEMBERS if m != member.name])
        self.hold_fault(1, 2.5 * ttl)

    def isolate_holder(self, ttl):
        node, _ = self.await_holder()
        node = node or self.rng.choice(NODES)
        self.fault("isolate_holder", node=node)
        self.network.partition([node], [p for p in PARTIES if p != node])
        self.hold_fault(ttl, 2.5 * ttl)

    def quorum_loss(self, ttl):
        self.fault("quorum_loss")
        for member in MEMBERS:
            self.network.partition([member], [m for m in MEMBERS if m != member])
        self.hold_fault(ttl + 1, 3 * ttl)

    def slow_link(self, ttl):
        party = self.rng.choice(PARTIES)
        party = self.holder()[0] or party if self.rng.random() < 0.3 else party
        shape = self.network.make_slow(party, self.rng)
        self.fault("slow_link", party=party, shape=shape)
        self.hold_fault(2, 3 * ttl)

    def pause_holder(self, ttl):
        node, pid = self.await_holder()
        if pid is None:
            self.fault("pause_holder", node=None)
            return
        self.fault("pause_holder", node=node, pid=pid)
        self.paused.add(pid)
        self.event("sigstop", node=node, pid=pid, t=time.monotonic())
        signal_quietly(pid, signal.SIGSTOP)
        time.sleep(ttl + self.rng.uniform(1, 3))
        self.event("sigcont", node=node, pid=pid, t=time.monotonic())
        signal_quietly(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def kill_holder(self, ttl):
        node, pid = self.await_holder()
        self.fault("kill_holder", node=node, pid=pid)
        if pid is not None:
            # Logged before the kill: the interval ends here at the latest.
            self.event("sigkill", node=node, pid=pid, why="nemesis")
            signal_quietly(pid, signal.SIGKILL)

    def kill_member(self, ttl):
        leader = leader_of(self.members)
        member = leader if leader and self.rng.random() < 0.5 else self.rng.choice(self.members)
        self.fault("kill_member", member=member.name, leader=member is leader)
        member.kill()
        self.network.member_down(member.name, True)
        self.hold_fault(1, 2 * ttl)

    def restart_members(self):
        for member in self.members:
            if not member.running():
                member.launch()
                self.network.member_down(member.name, False)
                wait_for(lambda: not member.running() or member.healthy(), 30,
                           "etcd member %s to rejoin" % member.name)
                if not member.running():
                    raise RuntimeError("etcd member %s would not start again; see %s"
                                       % (member.name, member.workdir))


def signal_quietly(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def is_helper(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return HELPER.encode() in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------
# The checker: reads the merged log, nothing else

def holding_intervals(events):
    """[(start, end, node, pid, ended_by)] for every helper that said '0'.

    An interval runs from '0' to the first of: its stdout closed, SIGTERM
    sent, exit, SIGKILL sent, and SIGSTOP sent.  A stopped process can do
    nothing, so a pause ends what it may do as a holder; what it does once
    woken (it must exit at once) is the prompt-fence check's business.
    """
    ends = collections.defaultdict(list)
    starts = {}
    for e in events:
        if e["ev"] == "held":
            starts[e["pid"]] = e
        elif e["ev"] in ("eof", "sigterm", "exit", "sigkill", "sigstop") and "pid" in e:
            ends[e["pid"]].append((e["t"], e["ev"]))
    last = max(e["t"] for e in events)
    intervals = []
    for pid, start in starts.items():
        after = sorted(end for end in ends[pid] if end[0] >= start["t"])
        end, why = after[0] if after else (last, "end of log")
        intervals.append((start["t"], end, start["node"], pid, why))
    return sorted(intervals)


def overlaps(intervals):
    found = []
    for i, (start, end, node, pid, _) in enumerate(intervals):
        for other in intervals[i + 1:]:
            if other[0] >= end:
                break
            if other[2] != node:
                found.append({"first": [node, pid, start, end], "second": list(other[2:4])
                              + list(other[:2]), "overlap_s": round(min(end, other[1]) - other[0], 3)})
    return found


def quorum_reachable(state, leaders=None):
    """A node can reach a member of a pair of live members that reach each
    other over links neither cut nor slow, and one of the pair says it is
    the leader: a quorum of three is there for that node to use (a slow
    link counts as no link: it promises nothing).  ``leaders``: the members
    that said they lead (None: not known, not asked)."""
    cut = {frozenset(pair) for pair in state["cut"]}
    slow, down = set(state["slow"]), set(state["down"])

    def linked(a, b):
        return frozenset((a, b)) not in cut and a not in slow and b not in slow
    live = [m for m in MEMBERS if m not in down]
    quorums = [(a, b) for a in live for b in live if a < b and linked(a, b)
               and (leaders is None or a in leaders or b in leaders)]
    return any(linked(node, a) or linked(node, b) for node in NODES for a, b in quorums)


def free_windows(events, intervals, start, end):
    """Stretches in [start, end] when nobody held the lock and a quorum was
    reachable: [(from, to)]."""
    points = sorted({start, end} | {t for i in intervals for t in i[:2] if start < t < end}
                    | {e["t"] for e in events if e["ev"] in ("net", "leaders")
                       and start < e["t"] < end})
    nets = [e for e in events if e["ev"] == "net"]
    leaders = [e for e in events if e["ev"] == "leaders"]
    windows, open_at = [], None
    for a, b in zip(points, points[1:]):
        middle = (a + b) / 2
        state = latest(nets, middle)
        leading = latest(leaders, middle)
        held = any(i[0] <= middle < i[1] for i in intervals)
        free = not held and state is not None and quorum_reachable(
            state, leading["members"] if leading else None if not leaders else [])
        if free and open_at is None:
            open_at = a
        elif not free and open_at is not None:
            windows.append((open_at, a))
            open_at = None
    if open_at is not None:
        windows.append((open_at, end))
    return windows


def latest(events, t):
    """The last of these events (in time order) at or before t, or None."""
    found = None
    for e in events:
        if e["t"] > t:
            break
        found = e
    return found


def prompt_fences(events, intervals):
    """For each holder stopped while it held: how long after SIGCONT its
    stdout closed (the lock given up) and it exited."""
    by_pid = collections.defaultdict(list)
    for e in events:
        if "pid" in e:
            by_pid[e["pid"]].append(e)
    active = {i[3]: i for i in intervals}
    checks = []
    for e in events:
        if e["ev"] != "sigstop":
            continue
        interval = active.get(e["pid"])
        if not interval or interval[4] != "sigstop":
            continue  # it had stopped holding before the pause
        later = by_pid[e["pid"]]
        cont = next((x["t"] for x in later if x["ev"] == "sigcont" and x["t"] >= e["t"]), None)
        eof = next((x["t"] for x in later if x["ev"] == "eof" and x["t"] >= e["t"]), None)
        gone = next((x["t"] for x in later if x["ev"] == "exit" and x["t"] >= e["t"]), None)
        checks.append({"node": e["node"], "pid": e["pid"], "paused_s": round(cont - e["t"], 2)
                       if cont else None,
                       "eof_after_cont_s": round(eof - cont, 3) if cont and eof else None,
                       "exit_after_cont_s": round(gone - cont, 3) if cont and gone else None})
    return checks


def last_fault_before(events, t):
    faults = [e for e in events if e["ev"] == "fault" and e["t"] <= t]
    if not faults:
        return None
    return "%s, %.1fs before" % (faults[-1]["kind"], t - faults[-1]["t"])


def helper_tracebacks(workdir):
    found = []
    for node in NODES:
        try:
            with open(os.path.join(workdir, node, "helpers.log"), "rb") as f:
                if b"Traceback" in f.read():
                    found.append(node)
        except OSError:
            pass
    return found


def check(events, workdir=None):
    """The verdict on one run's log: a dict, with 'failures' empty if all is well."""
    settings = next(e for e in events if e["ev"] == "run")
    ttl, free_limit = settings["lock_ttl"], settings["free_limit"]
    begin = next((e["t"] for e in events if e["ev"] == "nemesis_start"), None)
    finish = next((e["t"] for e in events if e["ev"] == "teardown"),
                  max(e["t"] for e in events))
    intervals = holding_intervals(events)
    found = overlaps(intervals)
    windows = free_windows(events, intervals, begin, finish) if begin else []
    longest = max(windows, key=lambda w: w[1] - w[0], default=(0, 0))
    fences = prompt_fences(events, intervals)
    statuses = collections.Counter(e["status"] if e["status"] is not None else "none"
                                   for e in events if e["ev"] == "status")
    faults = collections.Counter(e["kind"] for e in events if e["ev"] == "fault")
    minutes = (finish - begin) / 60 if begin else 0
    acquired = sum(1 for i in intervals if begin and i[0] >= begin)
    report = {
        "flavour": settings["flavour"], "api": settings["api"], "lock_ttl": ttl,
        "seed": settings["seed"], "minutes": round(minutes, 2),
        "netem": next((e["available"] for e in events if e["ev"] == "netem"), None),
        "faults": dict(sorted(faults.items())), "fault_count": sum(faults.values()),
        "acquisitions": acquired,
        "acquisitions_per_minute": round(acquired / minutes, 1) if minutes else 0,
        "statuses": dict(sorted(statuses.items())),
        "overlaps": found,
        "longest_free_s": round(longest[1] - longest[0], 2),
        "longest_free_at_s": round(longest[0] - begin, 1) if begin else None,
        "longest_free_after": last_fault_before(events, longest[0]),
        "free_windows_over_ttl": [
            {"at_s": round(w[0] - begin, 1), "length_s": round(w[1] - w[0], 2),
             "after": last_fault_before(events, w[0])}
            for w in windows if w[1] - w[0] > ttl],
        "free_limit_s": free_limit,
        "paused_holders": fences,
        "slowest_fence_s": max((c["eof_after_cont_s"] or 0 for c in fences), default=None),
        "failures": [],
    }
    failures = report["failures"]
    if begin is None:
        failures.append("no helper ever took the lock")
    if found:
        failures.append("%d overlaps of two holders" % len(found))
    if report["longest_free_s"] > free_limit:
        failures.append("the lock was free for %.1fs while a quorum was reachable (limit %.1fs)"
                        % (report["longest_free_s"], free_limit))
    for c in fences:
        if c["eof_after_cont_s"] is None or c["eof_after_cont_s"] > settings["prompt_fence"]:
            failures.append("holder %s (pid %d) did not give the lock up within %.1fs of "
                            "SIGCONT: %s" % (c["node"], c["pid"], settings["prompt_fence"],
                                             c["eof_after_cont_s"]))
    if statuses.get("none"):
        failures.append("%d helpers wrote no status within %ds" % (statuses["none"],
                                                                    STATUS_DEADLINE))
    odd = [e for e in events if e["ev"] in ("stdout", "garbage", "agent_gone")
           and not (e["ev"] == "agent_gone" and any(x["ev"] == "stopped" and x.get("node") ==
                                                    e["node"] for x in events))]
    if odd:
        failures.append("unexpected: %s" % json.dumps(odd[:3]))
    if workdir:
        tracebacks = helper_tracebacks(workdir)
        if tracebacks:
            failures.append("a traceback in the helper output of %s" % ", ".join(tracebacks))
    return report


def summary(report):
    lines = ["partition: %.1f min, %s api=%s lock_ttl=%d seed=%d (netem %s)" % (
        report["minutes"], report["flavour"], report["api"], report["lock_ttl"], report["seed"],
        "used" if report["netem"] else "not available: slow links are tbf rate limits")]
    lines.append("faults: %d (%s)" % (report["fault_count"], ", ".join(
        "%s %d" % item for item in report["faults"].items())))
    lines.append("acquisitions: %d (%.1f per minute); helper statuses: %s" % (
        report["acquisitions"], report["acquisitions_per_minute"],
        ", ".join("'%s' %d" % item for item in report["statuses"].items())))
    lines.append("overlaps: %d" % len(report["overlaps"]))
    for overlap in report["overlaps"][:5]:
        lines.append("  overlap: %s" % json.dumps(overlap))
    lines.append("longest free time while a quorum was reachable: %.2f s (limit %.1f s; "
                 "at %s s, fault %s)" % (report["longest_free_s"], report["free_limit_s"],
                                        report["longest_free_at_s"],
                                        report["longest_free_after"]))
    fences = report["paused_holders"]
    lines.append("holders paused past their TTL: %d, lock given up at most %s s after SIGCONT"
                 % (len(fences), report["slowest_fence_s"]))
    lines.append("verdict: %s" % ("; ".join(report["failures"]) or "ok"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The command line (scripts/partition)

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="partition",
        description="Run three etcd members and three nodes taking the CTDB lock in network "
                    "namespaces of their own, with faults at random; check that no two nodes "
                    "ever held the lock at once.")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--flavour", choices=("etcd34", "etcd35"), default="etcd35")
    parser.add_argument("--api", choices=("auto", "v2", "v3"), default="auto")
    parser.add_argument("--lock-ttl", type=int, default=4)
    parser.add_argument("--free-slack", type=float, default=5.0,
                        help="seconds over lock_ttl the lock may be free while a quorum is "
                             "reachable (default 5)")
    parser.add_argument("--json", help="write the report here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--check", metavar="EVENTS",
                        help="only check the events.jsonl of an earlier run")
    args = parser.parse_args(argv)
    if args.flavour == "etcd35" and args.api == "v2":
        parser.error("etcd35 serves no v2: use --api v3 or auto, or --flavour etcd34")
    if not 2 <= args.lock_ttl <= 60:
        parser.error("--lock-ttl must be between 2 and 60")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 20)
    args.free_limit = args.lock_ttl + args.free_slack
    return args


def main(argv, script):
    args = parse_args(argv)
    if args.check:
        with open(args.check) as f:
            report = check([json.loads(line) for line in f],
                           os.path.dirname(os.path.abspath(args.check)))
        print(summary(report))
        return 1 if report["failures"] else 0
    if os.environ.get(IN_NETNS) != "1":
        if os.geteuid() != 0 or not all(shutil.which(c) for c in ("ip", "tc", "nsenter",
                                                                  "unshare")):
            sys.stderr.write("partition: needs root, ip, tc, nsenter and unshare\n")
            return 2
        # Our own network namespace becomes the router between the parties.
        os.environ[IN_NETNS] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable, script] + list(argv))
    return run_in_netns(args)


def interrupted(signum, frame):
    raise KeyboardInterrupt


def run_in_netns(args):
    remove_stale_namespaces()
    workdir = tempfile.mkdtemp(prefix="partition-")
    print("partition: work directory %s" % workdir, flush=True)
    # Ctrl-C, SIGTERM and SIGHUP all stop the run and clean up (SIGINT too
    # when we were started with it ignored, as in the background of a script).
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    the_run = Run(args, workdir)
    try:
        the_run.start()
        the_run.nemesis()
    except KeyboardInterrupt:
        sys.stderr.write("partition: interrupted; cleaning up\n")
        the_run.interrupted = True
        return 130
    except (RuntimeError, AssertionError) as e:  # AssertionError: wait_for timed out
        sys.stderr.write("partition: %s\n" % e)
        return 2
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        the_run.stop()
        if getattr(the_run, "interrupted", False):
            sys.stderr.write("partition: cleaned up; log in %s\n" % workdir)
    report = check(the_run.events, workdir)
    print(summary(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if report["failures"] or args.keep:
        print("partition: log kept in %s/events.jsonl" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        node_agent(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:], os.path.abspath(__file__)))
