"""Real etcd members for tests and benchmarks: start one on free loopback
ports in a directory of its own, look at what it holds, pause it, stop it.

Flavours (whichever is not the system's etcd-server comes from fetch_etcd):
    etcd34  Debian 12's etcd 3.4, with --enable-v2 (v2 and v3 served)
    etcd35  Debian 13's etcd 3.5, v2 off as by default (v3 only)
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

import fetch_etcd

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


def b64(text):
    return base64.b64encode(text.encode()).decode()


def start_etcd(flavour, workdir, v2=None):
    suite, default_v2 = FLAVOURS[flavour]
    binary = fetch_etcd.etcd_binary(suite)
    return Etcd(binary, default_v2 if v2 is None else v2, workdir).start()
