"""srv_domain: etcd members found by DNS SRV, asked of a DNS responder of
our own (dnsresponder.py) on a loopback address.

Each helper runs in a private mount namespace whose /etc/resolv.conf names
that responder (timeout:1 attempts:1), whose /etc/hosts lacks the members'
names and whose /etc/nsswitch.conf says 'hosts: files dns', so that both
the helper's own SRV client and getaddrinfo ask our responder.  The members
are names with A records for 127.0.0.1, on the shared etcd 3.4 member's port
or on a port where nothing listens."""

import os
import signal
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import HELPER, Helper, helper_env, write_config
from dnsresponder import DnsResponder, query, quiet_address
from etcdmember import wait_for

DOMAIN = "example.test"
CLIENT = "_etcd-client._tcp." + DOMAIN
CLIENT_SSL = "_etcd-client-ssl._tcp." + DOMAIN
PLAIN = "_etcd._tcp." + DOMAIN  # python-etcd's record
RECORDS = (CLIENT_SSL, CLIENT, PLAIN)
M1, M2 = "m1." + DOMAIN, "m2." + DOMAIN

# "METHOD scheme://host:port/path", as -vv logs each request.
# A request for the lock; not the check, once the lock is taken, that every
# other member belongs to the same cluster (/v3/maintenance/status).
REQUEST = re.compile(r"\b(GET|PUT|POST|DELETE) (https?)://([^\s/]+):(\d+)/"
                     r"(?!v3/maintenance/status)")

IN_NAMESPACE = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && '
                '{ [ -z "$3" ] || mount --bind "$3" /etc/nsswitch.conf; } && '
                'shift 3 && exec "$@"')


class Namespace:
    """Files a private mount namespace binds over /etc: resolv.conf naming
    one nameserver, hosts without the members, nsswitch.conf 'files dns'."""

    def __init__(self, directory, nameserver):
        self.resolv = os.path.join(directory, "resolv.conf")
        self.hosts = os.path.join(directory, "hosts")
        self.nsswitch = ""
        self.nameserver(nameserver)
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
        if os.path.exists("/etc/nsswitch.conf"):
            self.nsswitch = os.path.join(directory, "nsswitch.conf")
            with open("/etc/nsswitch.conf") as f:
                lines = [line for line in f.read().splitlines()
                         if not line.strip().startswith("hosts:")]
            with open(self.nsswitch, "w") as f:
                f.write("\n".join(lines + ["hosts: files dns"]) + "\n")

    def nameserver(self, address):
        """resolv.conf names this one nameserver from now on."""
        with open(self.resolv, "w") as f:
            f.write("nameserver %s\noptions timeout:1 attempts:1\n" % address)

    def argv(self, argv):
        return ["unshare", "-m", "sh", "-c", IN_NAMESPACE, "sh", self.resolv, self.hosts,
                self.nsswitch] + list(argv)

    def run(self, argv, timeout=10):
        return subprocess.run(self.argv(argv), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)


@pytest.fixture
def dns():
    """A fresh responder; M1 and M2 are 127.0.0.1."""
    try:
        responder = DnsResponder()
    except OSError as e:
        pytest.skip("cannot serve DNS on loopback port 53: %s" % e)
    responder.a(M1, "127.0.0.1")
    responder.a(M2, "127.0.0.1")
    yield responder
    responder.close()


@pytest.fixture
def namespace(dns, tmp_path):
    """The namespace's files, checked: getent in it finds M1 by our DNS."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    ns = Namespace(str(tmp_path), dns.address)
    try:
        answer = ns.run(["getent", "ahostsv4", M1])
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("cannot run unshare: %s" % e)
    if answer.returncode != 0 or not answer.stdout.startswith(b"127.0.0.1 "):
        pytest.skip("no private mount namespace with our resolv.conf here (getent %s: "
                    "rc %d, %r, %r)" % (M1, answer.returncode, answer.stdout[:80],
                                        answer.stderr.decode("utf-8", "replace").strip()))
    if not dns.count(name=M1, rtype="A"):
        pytest.skip("getent found %s without asking our DNS (nscd?)" % M1)
    dns.queries = []
    return ns


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 bound (so nobody else gets it) but not listening:
    a connect is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except ConnectionRefusedError:
        pass
    else:
        pytest.fail("a connect to the unlistened port %d was accepted" % port)
    yield port
    sock.close()


@pytest.fixture
def srv_helper(namespace, tmp_path, stubs, started, lock_name):
    """srv_helper(args=("-vv",), **settings): the helper in the namespace with
    srv_domain = example.test (lock_ttl 3, refresh 0.5 unless given)."""
    def start(args=("-vv",), **settings):
        values = {"srv_domain": DOMAIN, "lock_ttl": 3, "refresh": 0.5,
                  "lock_name": lock_name}
        values.update(settings)
        config = write_config(str(tmp_path / ("srv-%d.conf" % len(started))), values)
        helper = Helper(namespace.argv([HELPER] + list(args) + ["-c", config]),
                        helper_env(stubs, tmp_path), str(tmp_path))
        started.append(helper)
        return helper
    return start


def requests(helper):
    """(scheme, host, port) of each request, in order, from the -vv log."""
    return [(m.group(2), m.group(3), int(m.group(4)))
            for m in REQUEST.finditer(helper.stderr())]


def first_request(helper):
    seen = requests(helper)
    assert seen, "no request in the -vv log: %s" % helper.stderr()
    return seen[0]


def holds_and_releases(helper, etcd, key):
    """Status 0, the lock ours in etcd, SIGTERM: exit 0 and the lock gone."""
    assert helper.status() == "0", helper.stderr()
    value = etcd.v3_value(key)
    assert value and "pid=%d" % helper.proc.pid in value, (value, helper.stderr())
    assert helper.terminate() == 0, helper.stderr()
    assert helper.rest_of_stdout() == b""
    assert etcd.v3_value(key) is None
    assert "Traceback" not in helper.stderr()


def one_error_line(helper, timeout=15):
    """Status 3, exit 3, one line on stderr; the line."""
    assert helper.status(timeout) == "3", helper.stderr()
    assert helper.wait() == 3
    assert helper.rest_of_stdout() == b""
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ctdb_etcd_lock: "), lines
    assert "Traceback" not in helper.stderr()
    return lines[0]


# ---------------------------------------------------------------------------
# The plumbing on its own (these pass whatever the helper does)

def test_responder_answers_srv_a_nxdomain_nodata_and_tcp(dns):
    dns.srv(CLIENT, (10, 5, 2380, M2), (0, 5, 2379, M1))
    dns.nodata(PLAIN)
    answer = query(dns.address, CLIENT)
    assert answer["rcode"] == 0 and not answer["tc"]
    assert [data for _, kind, data in answer["answers"]] == [(10, 5, 2380, M2),
                                                             (0, 5, 2379, M1)]
    assert query(dns.address, M1, "A")["answers"] == [(M1, "A", "127.0.0.1")]
    nodata = query(dns.address, M1, "AAAA")  # a known name: NOERROR, nothing
    assert (nodata["rcode"], nodata["answers"]) == (0, [])
    assert query(dns.address, PLAIN)["rcode"] == 0
    assert query(dns.address, CLIENT_SSL)["rcode"] == 3  # NXDOMAIN
    dns.compress_targets = True
    assert query(dns.address, CLIENT, tcp=True)["answers"][1][2] == (0, 5, 2379, M1)
    dns.mode = "truncate"
    truncated = query(dns.address, CLIENT)
    assert truncated["tc"] and truncated["answers"] == []
    assert len(query(dns.address, CLIENT, tcp=True)["answers"]) == 2
    assert query(dns.address, M1, "A")["answers"]  # only SRV answers are cut
    assert dns.count("tcp", "SRV", CLIENT) == 2 and dns.count("udp", "SRV") == 4
    dns.mode = "servfail"
    assert query(dns.address, CLIENT)["rcode"] == 2
    for mode in ("garbage", "noise"):
        dns.mode = mode
        with pytest.raises(ValueError):
            query(dns.address, CLIENT)
    dns.mode = "silent"
    with pytest.raises(socket.timeout):
        query(dns.address, CLIENT, timeout=0.3)


PROBE = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from dnsresponder import query
nameserver = [line.split()[1] for line in open('/etc/resolv.conf')
              if line.startswith('nameserver')][0]
print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[2], 2379, type=socket.SOCK_STREAM)}))
print([data for _, _, data in query(nameserver, sys.argv[3])['answers']])
"""


def test_namespace_resolves_by_our_dns(dns, namespace):
    # getaddrinfo (both families) and a raw SRV query, from inside the namespace.
    dns.srv(CLIENT, (0, 10, 2379, M1))
    dns.aaaa(M2, "::1")
    answer = namespace.run([sys.executable, "-c", PROBE,
                            os.path.join(os.path.dirname(__file__), "lib"), M1,
                            CLIENT])
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.decode().splitlines() == ["['127.0.0.1']",
                                                   "[(0, 10, 2379, '%s')]" % M1]
    assert dns.count("udp", "A", M1) >= 1 and dns.count("udp", "SRV", CLIENT) == 1
    hosts = namespace.run(["getent", "ahosts", M2])
    assert hosts.returncode == 0
    assert {line.split()[0] for line in hosts.stdout.decode().splitlines()} == {
        "127.0.0.1", "::1"}
    assert namespace.run(["getent", "ahostsv4", "absent." + DOMAIN]).returncode == 2


# ---------------------------------------------------------------------------
# Members found by SRV

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed-target"])
def test_one_member(etcd34, dns, srv_helper, key, compress):
    dns.compress_targets = compress
    dns.srv(CLIENT, (0, 10, etcd34.port, M1))
    helper = srv_helper()
    holds_and_releases(helper, etcd34, key)
    assert first_request(helper) == ("http", M1, etcd34.port)
    assert dns.count(rtype="SRV", name=CLIENT) >= 1
    assert dns.count(rtype="A", name=M1) >= 1, "getaddrinfo did not ask our DNS for %s" % M1


def test_lower_priority_first(etcd34, dns, srv_helper, key, closed_port):
    # Listed first but priority 10: M2, where nothing listens; priority 0: M1.
    dns.srv(CLIENT, (10, 100, closed_port, M2), (0, 1, etcd34.port, M1))
    # One of two members answers: no majority, so the cluster id vouches.
    helper = srv_helper(expected_cluster_id=etcd34.cluster_id())
    holds_and_releases(helper, etcd34, key)
    assert first_request(helper) == ("http", M1, etcd34.port), helper.stderr()
    assert ("http", M2, closed_port) not in requests(helper)


def test_fails_over_to_higher_priority(etcd34, dns, srv_helper, key, closed_port):
    # Priority 0 is down (connection refused): on to priority 10, at once.
    dns.srv(CLIENT, (10, 1, etcd34.port, M1), (0, 100, closed_port, M2))
    began = time.monotonic()
    helper = srv_helper(expected_cluster_id=etcd34.cluster_id())
    assert helper.status(timeout=10) == "0", helper.stderr()
    took = time.monotonic() - began
    assert took < 3, "failover took %.1fs" % took
    seen = requests(helper)
    assert seen[:1] == [("http", M2, closed_port)], helper.stderr()
    assert ("http", M1, etcd34.port) in seen
    holds_and_releases(helper, etcd34, key)


@pytest.mark.parametrize("heavy", [M1, M2])
def test_higher_weight_first(etcd34, dns, srv_helper, key, heavy):
    # Both names are the same etcd; the heavier record is listed last.
    light = M2 if heavy == M1 else M1
    dns.srv(CLIENT, (5, 10, etcd34.port, light), (5, 60, etcd34.port, heavy))
    # One member under two names counts once: the cluster id vouches.
    helper = srv_helper(expected_cluster_id=etcd34.cluster_id())
    holds_and_releases(helper, etcd34, key)
    assert first_request(helper) == ("http", heavy, etcd34.port), helper.stderr()


def test_only_member_down_names_it(dns, srv_helper, closed_port):
    dns.srv(CLIENT, (0, 10, closed_port, M1))
    line = one_error_line(srv_helper(args=()))
    assert "%s:%d" % (M1, closed_port) in line, line


def test_python_etcd_record_with_protocol(etcd34, dns, srv_helper, key):
    dns.srv(PLAIN, (0, 10, etcd34.port, M1))
    helper = srv_helper(protocol="http")
    holds_and_releases(helper, etcd34, key)
    assert first_request(helper) == ("http", M1, etcd34.port)
    assert dns.count(rtype="SRV", name=PLAIN) >= 1


def test_truncated_udp_answer_is_asked_again_over_tcp(etcd34, dns, srv_helper, key):
    dns.srv(CLIENT, (0, 10, etcd34.port, M1))
    dns.mode = "truncate"  # SRV answers only: getaddrinfo is not tested here
    helper = srv_helper()
    holds_and_releases(helper, etcd34, key)
    assert first_request(helper) == ("http", M1, etcd34.port)
    assert dns.count("udp", "SRV", CLIENT) >= 1
    assert dns.count("tcp", "SRV", CLIENT) >= 1, dns.queries


# ---------------------------------------------------------------------------
# No members found: status 3, one line naming the domain and the records

def test_no_records(dns, srv_helper):
    dns.nodata(*RECORDS)  # NOERROR, empty, for each record asked
    line = one_error_line(srv_helper(args=()))
    for word in (DOMAIN,) + tuple(record[:-len(DOMAIN) - 1] for record in RECORDS):
        assert word in line, (word, line)
    assert dns.count(rtype="SRV") >= 1


def test_nxdomain(dns, srv_helper):
    line = one_error_line(srv_helper(args=()))  # nothing set: NXDOMAIN for all
    assert DOMAIN in line and "_etcd-client._tcp" in line, line


@pytest.mark.parametrize("mode", ["garbage", "noise", "servfail"])
def test_broken_answer(dns, srv_helper, mode):
    # garbage: our id, then nothing that parses; noise: not even our id (so
    # the helper waits out timeout:1 for each record); servfail: rcode 2.
    dns.srv(CLIENT, (0, 10, 2379, M1))
    dns.mode = mode
    began = time.monotonic()
    line = one_error_line(srv_helper(args=()), timeout=10)
    assert time.monotonic() - began < 5
    assert DOMAIN in line and "_etcd-client._tcp" in line, line
    assert dns.count(rtype="SRV") >= 1


@pytest.mark.parametrize("nameserver", ["nothing-listens", "silent"])
def test_no_nameserver_answers(dns, namespace, srv_helper, nameserver):
    dns.srv(CLIENT, (0, 10, 2379, M1))
    if nameserver == "silent":
        dns.mode = "silent"
    else:
        namespace.nameserver(quiet_address())
    began = time.monotonic()
    line = one_error_line(srv_helper(args=()), timeout=10)
    took = time.monotonic() - began
    assert took < 5, "no nameserver: status 3 after %.1fs (timeout:1 attempts:1)" % took
    assert DOMAIN in line and "_etcd-client._tcp" in line, line


def test_sigterm_while_the_resolver_is_silent(etcd34, dns, namespace, tmp_path, stubs,
                                              started, lock_name):
    # A name, not SRV: resolved with the system's resolver, which cannot be
    # interrupted; the helper must not wait for it once told to go.
    dns.mode, dns.mode_types = "silent", ("A", "AAAA")
    config = write_config(str(tmp_path / "silent.conf"), {
        "host": M1, "port": etcd34.port, "lock_ttl": 3, "refresh": 0.5,
        "lock_name": lock_name})
    helper = Helper(namespace.argv([HELPER, "-c", config]), helper_env(stubs, tmp_path),
                    str(tmp_path))
    started.append(helper)
    wait_for(lambda: dns.count(name=M1), 5, "the helper to ask for its member's address")
    helper.proc.send_signal(signal.SIGTERM)
    told = time.monotonic()
    assert helper.wait(2) == 0
    assert time.monotonic() - told < 1
    assert helper.status(0.1) == ""
    assert "Traceback" not in helper.stderr()


# ---------------------------------------------------------------------------
# Targets get the checks a host in the config gets

@pytest.mark.parametrize("target", ["m1@x." + DOMAIN, "bad name." + DOMAIN,
                                    "a/b." + DOMAIN], ids=["at", "space", "slash"])
def test_a_target_that_is_no_host_name(dns, srv_helper, target):
    dns.srv(CLIENT, (0, 10, 2379, target))
    line = one_error_line(srv_helper(args=()))
    assert CLIENT in line and target in line and "fix the DNS" in line, line


def test_more_than_100_targets(etcd34, dns, srv_helper):
    dns.srv(CLIENT, *[(0, 10, etcd34.port, "m%d.%s" % (i, DOMAIN)) for i in range(101)])
    line = one_error_line(srv_helper(args=()))
    assert DOMAIN in line and "101" in line and "100" in line and "fix the DNS" in line, line
