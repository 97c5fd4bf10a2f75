"""Model fidelity (issue 16): the same sequences of requests, as the helper
sends them, to the simulation's model of etcd (tests/lib/simulation.py,
driven where a member takes a request) and to a real etcd member (etcd 3.4
with v2; etcd 3.5 for v3), and the answers that matter compared.

An answer is normalised into a small structure: the HTTP status; v2's
action, errorCode and message; nodes with key, value, ttl (within a second)
and whether they expire; v3's succeeded, key-values (key, value, lease),
lease IDs and TTLs (within a second), error code and message; what the
helper's own parser concludes from it (V2Lock._node, V3Lock._answer); and
which cluster and member the answer names.  Numbers that differ between
any two etcds (v2 indices, v3 revisions, lease and cluster IDs) become
labels: the n-th of its kind to appear, and for indices and revisions where
it stands among those seen before (``rev3@1``: the third revision, greater
than one seen before it), so that equal, increasing and the order of
in-order keys are compared, not the values.

Time: each request reaches the model at the simulated instant that equals
the real time since its sequence began, so TTLs count alike; steps that
wait for a TTL are few and short.  ``-m soak`` runs a long random sweep
with waits in it.
"""

import base64
import http.client
import json
import random
import time
import uuid
from urllib.parse import quote, urlencode

import pytest

import ctdb_etcd_lock as L
import simulation
from etcdmember import wait_for

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
BOGUS_LEASE = 1234567  # a lease neither side ever grants
# Field: how far two answers may differ.  A TTL in whole seconds, rounded
# (v2 up, v3 down) from times a few milliseconds apart, may differ by one;
# an expiry is found by each side's check every 0.5 s.
APPROX = {"ttl": 1, "TTL": 1, "after": 0.75}
RUN = uuid.uuid4().hex[:8]  # the shared member outlives a run: names of our own


def b64(text):
    return base64.b64encode(text.encode()).decode()


# ---------------------------------------------------------------------------
# The two sides: one request, (status, headers with lower-case names, body)

class RealSide:
    """A real etcd member, asked over HTTP as the helper asks it."""

    name = "etcd"

    def __init__(self, member):
        self.member = member
        self.started = time.monotonic()
        self.sent = 0.0  # when the last request was sent, into the sequence

    def elapsed(self):
        return time.monotonic() - self.started

    def ask(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.member.port, timeout=10)
        conn.connect()
        self.sent = self.elapsed()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, \
                answer.read()
        finally:
            conn.close()

    def wait_until(self, elapsed):
        """Time passing is the step itself: the condition is the clock's."""
        wait_for(lambda: self.elapsed() >= elapsed, elapsed - self.elapsed() + 5,
                 "%.2f s into the sequence" % elapsed)

    def poll(self, probe, timeout):
        """Ask probe() until it says True; (answer, seconds it took)."""
        start = self.elapsed()
        wait_for(probe, timeout, "a TTL to run out on etcd")
        return self.elapsed() - start


class Asker:
    """The model's view of whoever sent a request (it names them in its
    trace and its hygiene list)."""

    who = "difftest"
    done = False  # a running helper (its late POSTs count)
    last_look = 0.0

    class node:  # noqa: N801 - a node whose contender is never cut off here
        @staticmethod
        def maybe_cut_contender():
            pass


class Conn:
    """What the model's member answers on: one request's connection."""

    def __init__(self):
        self.server_queue = []
        self.busy = False
        self.reset = False
        self.answers = []

    def deliver(self, status, headers, data):
        self.answers.append((status, headers, data))


class ModelSide:
    """The model of a three-member etcd, asked at its leader's door
    (Member.arrive, as SimConnection delivers a request), on simulated time
    that follows the real time of the sequence."""

    name = "model"

    def __init__(self, seed, real, v2=True):
        self.sim = simulation.Sim(seed)
        self.cluster = simulation.Cluster(self.sim, loss=0.0)
        if not v2:
            for member in self.cluster.members:
                member.v2 = False
        self.member = self.cluster.members[self.cluster.leader]
        self.real = real

    def elapsed(self):
        return self.sim.now

    def ask(self, method, path, body=None, headers=None):
        self.sim.run_until(max(self.sim.now, self.real.sent))  # as etcd got it
        conn = Conn()
        self.member.arrive(conn, simulation.Request(
            Asker, conn, method, path, body or b"",
            {name.lower(): value for name, value in (headers or {}).items()}))
        limit = self.sim.now + simulation.REQUEST_TIMEOUT + 1
        while not conn.answers and self.sim.now < limit:
            self.sim.run_until(self.sim.now + 0.01)
        assert conn.answers, "the model never answered %s %s" % (method, path)
        status, headers, data = conn.answers[0]
        return status, {k.lower(): v for k, v in headers.items()}, data

    def wait_until(self, elapsed):
        self.sim.run_until(max(self.sim.now, elapsed))

    def poll(self, probe, timeout):
        start = self.sim.now
        while not probe():
            assert self.sim.now - start < timeout, "the model's TTL never ran out"
            self.sim.run_until(self.sim.now + 0.02)
        return self.sim.now - start


# ---------------------------------------------------------------------------
# One sequence on one side: requests as the helper sends them

class Run:
    """A sequence's requests on one side, with what that side named so far
    (entries by the POST that made them, leases by their grant) and its
    labels for the numbers in its answers."""

    def __init__(self, side, name):
        self.side = side
        self.key = "/_locks/_ctdb/" + name
        self.url = "/v2/keys" + quote(self.key)
        self.entries = []  # keys of the entries POSTs made, in order
        self.index = {}  # entry key -> its modifiedIndex as last answered
        self.created = {}  # entry key -> its createdIndex
        self.leases = []  # lease IDs granted, in order
        self.revision = None  # header revision of the last put that succeeded
        self.labels = {}  # kind -> {raw: label}
        self.raw = []  # (op, status, body) for the report

    # -- names of things

    def label(self, kind, raw, ordered=True):
        table = self.labels.setdefault(kind, {})
        if raw not in table:
            rank = sum(1 for other in table if other < raw)
            table[raw] = "%s%d%s" % (kind, len(table) + 1, "@%d" % rank if ordered else "")
        return table[raw]

    def entry(self, k):
        if 0 <= k < len(self.entries):
            return self.entries[k]
        return self.key + "/99999999999999999999"  # never made

    def lease(self, k):
        if k is not None and 0 <= k < len(self.leases):
            return self.leases[k]
        return BOGUS_LEASE

    def key_label(self, key):
        if key == self.key:
            return "DIR/KEY"
        if key.startswith(self.key + "/"):
            tail = key[len(self.key) + 1:]
            return self.label("entry", int(tail)) if tail.isdigit() else "entry " + tail
        return "other key %r" % key

    # -- the requests

    def v2(self, method, path, form=None):
        body = urlencode(form).encode() if form else None
        return self.side.ask(method, path, body, FORM if form else {})

    def v3(self, method, payload):
        return self.side.ask("POST", "/v3" + method, json.dumps(payload).encode(), JSON)

    def do(self, op):
        """(kind of answer, status, headers, body), or None for a step
        that asks nothing."""
        kind, args = op[0], op[1:]
        if kind == "v2_post":  # V2Lock.acquire
            value, ttl = args
            return "v2", self.v2("POST", self.url, {"value": value, "ttl": ttl})
        if kind == "v2_post_under":  # into an entry: a plain key where a directory belongs
            value, ttl = args[1:]
            return "v2", self.v2("POST", "/v2/keys" + quote(self.entry(args[0])),
                                 {"value": value, "ttl": ttl})
        if kind == "v2_get_dir":  # V2Lock.entries (quorum), --status alike without
            return "v2", self.v2("GET", self.url + ("?quorum=true" if args[0] else ""))
        if kind == "v2_get_entry":  # V2Lock._moved_on
            return "v2", self.v2("GET", "/v2/keys" + quote(self.entry(args[0]))
                                 + "?quorum=true")
        if kind == "v2_cas":  # V2Lock.refresh
            k, value, which, ttl = args
            key = self.entry(k)
            index = {"last": self.index, "created": self.created}[which].get(key, 4)
            return "v2", self.v2("PUT", "/v2/keys" + quote(key), {
                "refresh": "true", "prevValue": value, "prevIndex": index, "ttl": ttl})
        if kind == "v2_cad":  # V2Lock._delete
            k, value = args
            return "v2", self.v2("DELETE", "/v2/keys" + quote(self.entry(k)) + "?"
                                 + urlencode({"prevValue": value}))
        if kind == "v2_served":  # Transport.serves_v2, --check: served or not, no more
            return "served", self.v2("GET", "/v2/keys/")
        if kind == "v3_grant":  # V3Lock.grant
            asked = self.v3("/lease/grant", {"TTL": args[0]})
            if asked[0] == 200:
                self.leases.append(int(json.loads(asked[2].decode())["ID"]))
            return "v3", asked
        if kind == "v3_keepalive":  # V3Lock.refresh
            return "v3", self.v3("/lease/keepalive", {"ID": str(self.lease(args[0]))})
        if kind == "v3_revoke":  # V3Lock.revoke
            return "v3", self.v3("/lease/revoke", {"ID": str(self.lease(args[0]))})
        if kind == "v3_timetolive":  # V3Lock._occupant
            return "v3", self.v3("/lease/timetolive", {"ID": str(self.lease(args[0]))})
        if kind == "v3_take":  # V3Lock.acquire's transaction
            value, k = args
            key = b64(self.key)
            return "txn", self.v3("/kv/txn", {
                "compare": [{"target": "CREATE", "key": key, "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": b64(value),
                                             "lease": str(self.lease(k))}}],
                "failure": [{"request_range": {"key": key}}]})
        if kind == "v3_give_back":  # V3Lock.release's transaction
            which, value = args
            revision = {"ours": self.revision or 0, "zero": 0,
                        "older": (self.revision or 1) - 1}[which]
            key = b64(self.key)
            return "txn", self.v3("/kv/txn", {
                "compare": [{"target": "CREATE", "key": key, "create_revision": str(revision)},
                            {"target": "VALUE", "key": key, "value": b64(value)}],
                "success": [{"request_delete_range": {"key": key}}]})
        if kind == "v3_range":  # V3Lock.range
            return "v3", self.v3("/kv/range", {"key": b64(self.key)})
        if kind == "v3_gateway":  # V3Lock.find_gateway
            return "v3", self.side.ask("POST", "/v3/kv/range", b'{"key": "AA=="}', JSON)
        if kind == "v3_may_write":  # V3Lock.may_write
            key = b64(self.key)
            return "txn", self.v3("/kv/txn", {
                "compare": [{"target": "CREATE", "key": key, "result": "LESS",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": ""}}]})
        if kind == "v3_status":  # Transport.ask_cluster
            return "v3", self.side.ask("POST", "/v3/maintenance/status", b"{}", JSON)
        raise AssertionError("no such step %r" % (op,))

    def step(self, op):
        """One step: its normalised answer (None for a step that asks nothing)."""
        kind = op[0]
        if kind == "pass":  # time passes, nothing asked
            self.side.wait_until(self.side.elapsed() + op[1])
            return None
        if kind in ("v2_until_gone", "v3_until_gone"):
            # Ask again until the TTL ran out; how long that took counts.
            asked = [None]

            def gone():
                asked[0] = self.do(("v2_get_entry", op[1]) if kind == "v2_until_gone"
                                   else ("v3_range",))
                status, body = asked[0][1][0], asked[0][1][2]
                return status == 404 if kind == "v2_until_gone" else b'"kvs"' not in body
            after = self.side.poll(gone, 8)
            answer = self.normalise(asked[0])
            answer["after"] = after
            return answer
        return self.normalise(self.do(op))

    # -- what matters of an answer

    def normalise(self, asked):
        api, (status, headers, body) = asked
        self.raw.append((status, body[:400]))
        answer = {"status": status}
        try:
            data = json.loads(body.decode())
        except ValueError:
            answer["text"] = body.decode(errors="replace").strip()[:60]
            data = None
        cluster = headers.get("x-etcd-cluster-id")
        if cluster:
            answer["cluster"] = self.label("cluster", cluster, ordered=False)
        response = L.Response(status, headers, body, "etcd")
        if api == "served":
            return {"served": not L._serves_no_v2(response)}
        if api == "v2":
            answer["parser"] = self.v2_parser(response)
            if isinstance(data, dict):
                self.v2_answer(data, answer)
        else:
            answer["parser"] = self.v3_parser(response)
            if isinstance(data, dict):
                self.v3_answer(data, answer, api)
        return answer

    def v2_parser(self, response):
        lock = L.V2Lock(Stub(), L.Config({"lock_name": "d"}), None, None)
        try:
            node = lock._node(response)
        except L.ApiNotServed:
            return "v2 not served"
        except L.EtcdError as e:
            return "etcd error %s, %s" % (e.code, "final" if L._final(e) else "may pass")
        except L.EtcdLockError as e:
            return "%s" % type(e).__name__
        return "dir" if node.dir else "node"

    def v3_parser(self, response):
        lock = L.V3Lock(Stub(), L.Config({"lock_name": "d"}), None, None)
        try:
            lock._answer(response)
        except L.AuthError:
            return "auth error"
        except L.EtcdError as e:
            return "etcd error %s, HTTP %s, %s" % (e.code, e.status,
                                                    "final" if L._final(e) else "may pass")
        except L.EtcdLockError as e:
            return "%s" % type(e).__name__
        return "ok"

    def v2_node(self, node, top=False):
        out = {"key": self.key_label(node.get("key", ""))}
        for name in ("value", "dir", "ttl"):
            if name in node:
                out[name] = node[name]
        out["expires"] = "expiration" in node
        if not node.get("dir"):  # a directory's own indices: the helper reads none
            for name in ("createdIndex", "modifiedIndex"):
                if name in node:
                    out[name] = self.label("index", node[name])
        if "nodes" in node:
            out["nodes"] = [self.v2_node(child) for child in
                            sorted(node["nodes"], key=lambda child: child.get("key", ""))]
        if top and not node.get("dir") and "key" in node:
            self.index[node["key"]] = node.get("modifiedIndex")
            self.created.setdefault(node["key"], node.get("createdIndex"))
        for child in node.get("nodes") or ():
            self.index[child["key"]] = child.get("modifiedIndex")
        return out

    def v2_answer(self, data, answer):
        for name in ("action", "errorCode", "message"):
            if name in data:
                answer[name] = data[name]
        if "node" in data:
            answer["node"] = self.v2_node(data["node"], top=True)
            if data.get("action") == "create":
                self.entries.append(data["node"]["key"])
        if "prevNode" in data:
            answer["prevNode"] = self.v2_node(data["prevNode"])

    def v3_kv(self, kv):
        out = {"key": self.key_label(base64.b64decode(kv.get("key", "")).decode()),
               "value": base64.b64decode(kv.get("value", "")).decode()}
        for name in ("create_revision", "mod_revision"):
            out[name] = self.label("rev", int(kv.get(name, 0)))
        out["lease"] = self.lease_label(kv.get("lease"))
        return out

    def lease_label(self, raw):
        if raw in (None, "0"):
            return None
        if int(raw) == BOGUS_LEASE:
            return "bogus"
        return self.label("lease", int(raw), ordered=False)

    def v3_header(self, header, answer):
        if "cluster_id" in header:
            answer["cluster"] = self.label("cluster", L._hex(header["cluster_id"]),
                                           ordered=False)
        if "member_id" in header:
            answer["member"] = self.label("member", header["member_id"], ordered=False)
        if "revision" in header:
            answer["revision"] = self.label("rev", int(header["revision"]))

    def v3_answer(self, data, answer, api):
        if "code" in data or "error" in data:  # 3.4: error, message, code; 3.5: no error
            answer["code"] = data.get("code")
            answer["message"] = data.get("message")
        result = data.get("result") if isinstance(data.get("result"), dict) else data
        header = dict(result.get("header") or {})
        if result is not data:
            # A keepalive's: etcd's revision comes before or after the revoke
            # of the expired lease it waited for.  The helper reads none.
            header.pop("revision", None)
        self.v3_header(header, answer)
        if "ID" in result:
            answer["ID"] = self.lease_label(result["ID"])
        if "ID" in result:  # a lease's answer: the gateway leaves out zero values,
            for name in ("TTL", "grantedTTL"):  # the parser reads them as 0
                answer[name] = int(result.get(name, 0))
        if "leader" in data:
            answer["leader is member"] = data["leader"] == (data.get("header") or {}).get(
                "member_id")
        if api == "txn":  # zero values left out: no succeeded, no responses
            answer["succeeded"] = data.get("succeeded", False)
            answers = []
            for one in data.get("responses") or []:
                for name, inner in one.items():
                    out = {"kind": name}
                    if "header" in inner and "revision" in inner["header"]:
                        out["revision"] = self.label("rev", int(inner["header"]["revision"]))
                    if "kvs" in inner:
                        out["kvs"] = [self.v3_kv(kv) for kv in inner["kvs"]]
                    if "deleted" in inner:
                        out["deleted"] = inner["deleted"]
                    answers.append(out)
            answer["responses"] = answers
            if data.get("succeeded") and any(r["kind"] == "response_put" for r in answers):
                self.revision = int(data["header"]["revision"])
        if "kvs" in data:
            answer["kvs"] = [self.v3_kv(kv) for kv in data["kvs"]]


class Stub:
    """The transport as the parsers see it: they only report the cluster."""

    endpoint = "etcd"

    def check_cluster(self, cluster_id, endpoint, member_id=None):
        pass


# ---------------------------------------------------------------------------
# Comparing

def difference(a, b, where="answer"):
    """Where two normalised answers differ in what matters, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b:
                return "%s.%s: %s only" % (where, name, "etcd" if name in a else "the model")
            if name in APPROX and isinstance(a[name], (int, float)) \
                    and isinstance(b[name], (int, float)):
                if abs(a[name] - b[name]) > APPROX[name]:
                    return "%s.%s: %r != %r" % (where, name, a[name], b[name])
                continue
            found = difference(a[name], b[name], "%s.%s" % (where, name))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return "%s: %d items != %d" % (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            found = difference(x, y, "%s[%d]" % (where, i))
            if found:
                return found
        return None
    return None if a == b else "%s: %r != %r" % (where, a, b)


def run_sequence(member, ops, seed, v2=True):
    """Run ops on the real member and on a fresh model side by side; fail
    naming the sequence, the step and both answers at the first difference.
    The number of steps compared."""
    name = "diff-%s-%d" % (RUN, run_sequence.count)
    run_sequence.count += 1
    real_side = RealSide(member)
    real = Run(real_side, name)
    model = Run(ModelSide(seed, real_side, v2=v2), name)
    compared = 0
    try:
        for step, op in enumerate(ops):
            theirs = real.step(op)
            ours = model.step(op)
            if theirs is None:
                continue
            compared += 1
            found = difference(theirs, ours)
            if found:
                pytest.fail("model and etcd differ at step %d %r: %s\nsequence (seed %s):\n%s\n"
                            "etcd:  %s\nmodel: %s\netcd said:  %s\nmodel said: %s" % (
                                step, op, found, seed, "\n".join(
                                    "  %2d %r" % item for item in enumerate(ops)),
                                json.dumps(theirs, sort_keys=True),
                                json.dumps(ours, sort_keys=True),
                                real.raw[-1] if real.raw else None,
                                model.raw[-1] if model.raw else None))
        # One cluster, named alike by v2's header and v3's answers.
        assert len(real.labels.get("cluster", ())) <= 1, real.labels["cluster"]
        assert len(model.labels.get("cluster", ())) <= 1, model.labels["cluster"]
    finally:
        for lease in real.leases:  # nothing of ours left to expire meanwhile
            real.v3("/lease/revoke", {"ID": str(lease)})
    return compared


run_sequence.count = 0


# ---------------------------------------------------------------------------
# The sequences

V2_QUEUE = [  # two contenders, the first refreshes and gives back
    ("v2_served",),
    ("v2_get_dir", True),  # no directory yet
    ("v2_cas", 0, "a", "last", 3),  # an entry never made
    ("v2_post", "a", 3),
    ("v2_post", "b", 3),
    ("v2_get_dir", True),
    ("v2_get_dir", False),
    ("v2_cas", 0, "a", "last", 3),  # refresh: index moves on
    ("v2_cas", 0, "a", "created", 3),  # a refresh late: index compare fails
    ("v2_cas", 0, "x", "last", 3),  # another value
    ("v2_get_entry", 0),
    ("v2_cad", 1, "x"),  # not ours
    ("v2_cad", 1, "b"),
    ("v2_cad", 1, "b"),  # gone already
    ("v2_get_dir", True),
    ("v2_cad", 0, "a"),
    ("v2_get_dir", True),  # the directory stays, empty
    ("v2_post", "c", 2),
    ("v2_get_entry", 0),  # deleted
    ("v2_post_under", 2, "d", 2),  # error 104 (V2Lock.acquire names the plain key)
]

V3_LOCK = [  # take, contend, refresh, give back, and the leftovers
    ("v3_status",),
    ("v3_gateway",),
    ("v3_range",),
    ("v3_may_write",),
    ("v3_take", "a", BOGUS_LEASE),  # on a lease nobody granted
    ("v3_grant", 3),
    ("v3_take", "a", 0),
    ("v3_take", "a", 0),  # our own put, its answer lost: the failure's range
    ("v3_grant", 3),
    ("v3_take", "b", 1),  # a contender
    ("v3_range",),
    ("v3_may_write",),
    ("v3_timetolive", 0),
    ("v3_keepalive", 0),
    ("v3_give_back", "older", "a"),  # not our create revision
    ("v3_give_back", "ours", "b"),  # not our value
    ("v3_give_back", "ours", "a"),
    ("v3_range",),
    ("v3_give_back", "ours", "a"),  # gone already
    ("v3_revoke", 0),
    ("v3_revoke", 0),  # gone already
    ("v3_keepalive", 0),
    ("v3_timetolive", 0),
    ("v3_take", "b", 1),
    ("v3_revoke", 1),  # the key goes with its lease
    ("v3_range",),
    ("v3_keepalive", None),
    ("v3_timetolive", None),
    ("v3_revoke", None),
]

V2_TTL = [  # an entry refreshed, then let go: TTLs count on the model's clock
    ("v2_post", "a", 3),
    ("pass", 2.2),
    ("v2_get_dir", True),
    ("v2_cas", 0, "a", "last", 3),  # its TTL starts again
    ("v2_get_entry", 0),
    ("v2_until_gone", 0),
    ("v2_get_dir", True),
    ("v2_cas", 0, "a", "last", 3),
]

V3_TTL = [  # a lease kept alive, then let go; its key goes with it
    ("v3_grant", 3),
    ("v3_take", "a", 0),
    ("pass", 2.2),
    ("v3_timetolive", 0),
    ("v3_keepalive", 0),  # its TTL starts again
    ("v3_timetolive", 0),
    ("v3_until_gone",),
    ("v3_keepalive", 0),
    ("v3_timetolive", 0),
    ("v3_revoke", 0),
]


V3_LATE_KEEPALIVE = [  # a keepalive after the lease expired, before it is revoked
    ("v3_grant", 2),
    ("v3_take", "a", 0),
    ("pass", 2.15),  # expired; etcd revokes within its next check (0.5 s)
    ("v3_keepalive", 0),  # etcd waits for the revoke: not found, never renewed
    ("v3_range",),
    ("v3_timetolive", 0),
]

V2_REFUSED = [  # etcd 3.5 without --enable-v2: every v2 request, a plain 404
    ("v2_served",),
    ("v2_get_dir", True),
    ("v2_post", "a", 3),
    ("v2_get_entry", 0),
    ("v2_cas", 0, "a", "last", 3),
    ("v2_cad", 0, "a"),
    ("v3_status",),
]


def random_sequence(rng, apis, length, waits=False):
    """A sequence of steps the helper takes, in a random order: values from
    a small set, so that compares hold now and then; entries and leases by
    the order they were made in (or one never made)."""
    ops, posts, grants = [], 0, 0
    for _ in range(length):
        kinds = []
        if "v2" in apis:
            kinds += ["v2_post"] * 3 + ["v2_get_dir"] * 2 + ["v2_get_entry", "v2_cas",
                                                             "v2_cas", "v2_cad", "v2_cad"]
        if "v3" in apis:
            kinds += ["v3_grant"] * 2 + ["v3_take"] * 3 + [
                "v3_keepalive", "v3_revoke", "v3_timetolive", "v3_give_back",
                "v3_give_back", "v3_range", "v3_range", "v3_may_write"]
        if waits:
            kinds += ["pass"]
        kind = rng.choice(kinds)
        value = rng.choice("ab")
        entry = rng.randrange(-1, posts) if posts and rng.random() < 0.9 else -1
        lease = rng.randrange(grants) if grants and rng.random() < 0.9 else None
        if kind == "v2_post":
            op = (kind, value, rng.choice((2, 3)))
            posts += 1
        elif kind == "v2_get_dir":
            op = (kind, rng.random() < 0.8)
        elif kind == "v2_get_entry":
            op = (kind, entry)
        elif kind == "v2_cas":
            op = (kind, entry, value, rng.choice(("last", "last", "created")),
                  rng.choice((2, 3)))
        elif kind == "v2_cad":
            op = (kind, entry, value)
        elif kind == "v3_grant":
            op = (kind, rng.choice((2, 3)))
            grants += 1
        elif kind == "v3_take":
            op = (kind, value, lease)
        elif kind == "v3_give_back":
            op = (kind, rng.choice(("ours", "ours", "zero", "older")), value)
        elif kind == "pass":
            op = (kind, round(rng.uniform(0.2, 1.5), 2))
        elif kind in ("v3_keepalive", "v3_revoke", "v3_timetolive"):
            op = (kind, lease)
        else:
            op = (kind,)
        ops.append(op)
    return ops


def sequences(seed, count, apis, waits=False):
    rng = random.Random(seed)
    return [random_sequence(rng, apis, rng.randint(5, 15), waits) for _ in range(count)]


# ---------------------------------------------------------------------------
# The tests

@pytest.mark.parametrize("ops", [V2_QUEUE, V2_TTL], ids=["queue", "ttl"])
def test_v2_steps_answer_alike(etcd34, ops):
    assert run_sequence(etcd34, ops, seed=1) >= len(ops) - 1


@pytest.mark.parametrize("flavour", ["etcd34", "etcd35"])
@pytest.mark.parametrize("ops", [V3_LOCK, V3_TTL, V3_LATE_KEEPALIVE],
                         ids=["lock", "ttl", "late keepalive"])
def test_v3_steps_answer_alike(etcd_members, flavour, ops):
    assert run_sequence(etcd_members(flavour), ops, seed=2) >= len(ops) - 1


def test_v2_refused_alike(etcd_members):
    assert run_sequence(etcd_members("etcd35"), V2_REFUSED, seed=3, v2=False) == len(
        V2_REFUSED)


@pytest.mark.parametrize("flavour, apis, count", [
    ("etcd34", ("v2",), 15), ("etcd34", ("v2", "v3"), 15), ("etcd35", ("v3",), 15)])
def test_random_sequences_answer_alike(etcd_members, flavour, apis, count):
    member = etcd_members(flavour)
    for i, ops in enumerate(sequences(16 + len(apis) + (flavour == "etcd35"), count, apis)):
        run_sequence(member, ops, seed=i)


@pytest.mark.soak
@pytest.mark.parametrize("flavour, apis", [
    ("etcd34", ("v2",)), ("etcd34", ("v2", "v3")), ("etcd35", ("v3",))])
def test_soak_random_sequences_with_time_passing(etcd_members, flavour, apis):
    member = etcd_members(flavour)
    for i, ops in enumerate(sequences(1600 + len(apis), 100, apis, waits=True)):
        run_sequence(member, ops, seed=i)


# ---------------------------------------------------------------------------
# What one member cannot show: the model's stale reads and its auth tokens

def _ask_model(sim, member, method, path, body=b"", headers=None, wait=10):
    conn = Conn()
    member.arrive(conn, simulation.Request(Asker, conn, method, path, body, headers or {}))
    limit = sim.now + wait
    while not conn.answers and sim.now < limit:
        sim.run_until(sim.now + 0.01)
    assert conn.answers, "no answer to %s %s" % (method, path)
    status, _, data = conn.answers[0]
    return status, json.loads(data.decode())


@pytest.mark.fast
def test_the_model_serves_a_stale_read_from_a_member_cut_off_from_the_leader():
    """etcd answers a v2 GET without quorum=true from the receiving member's
    own store: one cut off from the leader shows the lock as it was."""
    sim = simulation.Sim(1)
    cluster = simulation.Cluster(sim, loss=0.0)
    leader = cluster.members[cluster.leader]
    follower = cluster.members[(cluster.leader + 1) % simulation.MEMBERS]
    url = "/v2/keys/_locks/_ctdb/stale"
    status, posted = _ask_model(sim, leader, "POST", url, b"value=a&ttl=60", FORM)
    assert status == 201
    sim.run_until(sim.now + 0.5)
    cluster.links.cut[simulation.Links._key(follower.name, leader.name)] = [
        (sim.now, sim.now + 100)]
    sim.run_until(sim.now + 0.5)
    status, _ = _ask_model(sim, leader, "DELETE", url + "/" + posted["node"]["key"].rsplit(
        "/", 1)[1] + "?prevValue=a")
    assert status == 200
    status, seen = _ask_model(sim, follower, "GET", url)
    assert status == 200 and [n["value"] for n in seen["node"]["nodes"]] == ["a"]
    status, _ = _ask_model(sim, leader, "GET", url)
    assert status == 200  # the leader's own store: gone
    status, error = _ask_model(sim, follower, "GET", url + "?quorum=true")
    assert status == 500 and "timed out" in error["cause"]  # no quorum behind it


@pytest.mark.fast
def test_the_models_auth_tokens_expire_when_idle_and_die_with_their_member():
    sim = simulation.Sim(2)
    cluster = simulation.Cluster(sim, loss=0.0)
    cluster.auth, cluster.token_ttl = True, 3.0
    member = cluster.members[cluster.leader]
    login = json.dumps({"name": "sim", "password": "simpass"}).encode()
    status, answer = _ask_model(sim, member, "POST", "/v3/auth/authenticate", login, JSON)
    token = answer["token"]
    key = json.dumps({"key": "AA=="}).encode()
    ask = dict(JSON, authorization=token)
    for _ in range(3):  # each use keeps it alive
        sim.run_until(sim.now + 2)
        assert _ask_model(sim, member, "POST", "/v3/kv/range", key, ask)[0] == 200
    sim.run_until(sim.now + 3.5)
    status, error = _ask_model(sim, member, "POST", "/v3/kv/range", key, ask)
    assert status == 401 and error["message"] == "etcdserver: invalid auth token"
    status, answer = _ask_model(sim, member, "POST", "/v3/auth/authenticate", login, JSON)
    ask["authorization"] = answer["token"]
    other = cluster.members[(cluster.leader + 1) % simulation.MEMBERS]
    simulation._kill_member(cluster, other.index)
    other.up = True  # restarted: its tokens are gone, the others' stay
    assert _ask_model(sim, other, "POST", "/v3/kv/range", key, ask)[0] == 401
    assert _ask_model(sim, member, "POST", "/v3/kv/range", key, ask)[0] == 200
