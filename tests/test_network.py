"""Networks that misbehave between the helper and a real etcd: client
traffic delayed on its way (late refreshes must not keep the lock alive
after the helper fenced itself), and a host name whose first address
silently drops packets (each address gets its share of the deadline).

Only loopback addresses, and a private mount namespace for /etc/hosts."""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import HELPER, Helper, held_apis, helper_env, write_config
from etcdmember import wait_for


def ours_in_etcd(etcd, key, where, value):
    """Is our lock (by its value) still in etcd, asked directly?"""
    if where == "v2":
        return any(entry.get("value") == value for entry in etcd.v2_entries(key))
    return etcd.v3_value(key) == value


def stdout_eof(helper, timeout):
    """Wait for EOF on the helper's stdout (after its status byte); its time."""
    ready, _, _ = select.select([helper.proc.stdout], [], [], timeout)
    assert ready, "stdout still open after %.1fs; stderr: %s" % (timeout, helper.stderr())
    assert os.read(helper.proc.stdout.fileno(), 64) == b"", "more than one status byte"
    return time.monotonic()


@pytest.mark.parametrize("api", ["v2", "v3", "auto"])
def test_delayed_refreshes_do_not_outlive_the_helper(etcd34, spawn, delay_proxy, key, api):
    lock_ttl, delay = 3, 2.5
    proxy = delay_proxy(etcd34.port)
    helper = spawn(port=proxy.port, api=api, lock_ttl=lock_ttl, refresh=0.5)
    assert helper.status() == "0"
    values = {where: etcd34.value(where, key) for where in held_apis(api, etcd34)}
    for where, value in values.items():
        assert value and "pid=%d" % helper.proc.pid in value, (where, value)

    # From now on every byte to etcd arrives 2.5 s late: refreshes are
    # answered too late to count, but do arrive.
    proxy.delay = delay
    delayed = time.monotonic()

    # It fences itself: stdout closed, "lock lost", the process gone, within lock_ttl
    # of the delay's start (a little slack for this test's own polling).
    eof = stdout_eof(helper, lock_ttl + 2)
    assert eof - delayed <= lock_ttl + 0.25, (
        "stdout closed %.2fs after the delay began, lock_ttl is %ds" % (eof - delayed, lock_ttl))
    helper.wait(timeout=max(0.01, delayed + lock_ttl + 0.25 - time.monotonic()))
    exited = time.monotonic()
    assert "lock lost" in helper.stderr(), helper.stderr()

    # Asked directly: the lock is gone within lock_ttl of the exit, whatever
    # late refreshes the network still delivers.
    def gone():
        return not any(ours_in_etcd(etcd34, key, where, value)
                       for where, value in values.items())
    try:
        wait_for(gone, max(0.0, exited + lock_ttl - time.monotonic()),
                 "the lock to be gone from etcd")
    except AssertionError:
        raise AssertionError(
            "%s lock still in etcd %.1fs after the helper exited (lock_ttl %ds); "
            "v2 entries: %r, v3 value: %r" % (
                api, time.monotonic() - exited, lock_ttl, etcd34.v2_entries(key),
                etcd34.v3_value(key))) from None

    contender = spawn(etcd34, api=api)
    assert contender.status() == "0", contender.stderr()
    assert contender.terminate() == 0


# ---------------------------------------------------------------------------
# A host name with two addresses, the first dropping every SYN

def black_hole(address, port):
    """A listener at address:port whose accept queue is full: later SYNs are
    dropped without an answer.  Returns the sockets (to close)."""
    listener = socket.socket()
    sockets = [listener]
    try:
        listener.bind((address, port))
        listener.listen(0)
        for _ in range(16):
            filler = socket.socket()
            sockets.append(filler)
            filler.setblocking(False)
            filler.connect_ex((address, port))
            _, writable, _ = select.select([], [filler], [], 0.3)
            if not writable:  # this one's SYN went unanswered: the queue is full
                break
        else:
            raise AssertionError("the accept queue of %s:%d never filled" % (address, port))
        probe = socket.socket()
        sockets.append(probe)
        probe.settimeout(0.5)
        try:
            probe.connect((address, port))
        except socket.timeout:
            pass
        else:
            raise AssertionError("a connect to %s:%d was answered" % (address, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


IN_NAMESPACE = ('mount --bind "$1" /etc/hosts && '
                '{ [ -z "$2" ] || mount --bind "$2" /etc/gai.conf; } && shift 2 && exec "$@"')


def in_namespace(hosts, gai, argv):
    """argv run in a private mount namespace that sees our hosts (and gai.conf)."""
    return ["unshare", "-m", "sh", "-c", IN_NAMESPACE, "sh", hosts, gai] + list(argv)


def test_second_address_is_tried_in_time(etcd34, tmp_path, stubs, started, key, lock_name):
    # etcd listens on 127.0.0.1:P only; 127.0.0.2:P drops every SYN.
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    port = etcd34.port
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 etcd-multi\n127.0.0.1 etcd-multi\n")
    # glibc sorts 127.0.0.1 first (longest prefix with the source address)
    # unless told otherwise: give 127.0.0.2 the highest precedence.
    gai = ""
    if os.path.exists("/etc/gai.conf"):
        gai = str(tmp_path / "gai.conf")
        with open(gai, "w") as f:
            f.write("precedence ::ffff:127.0.0.2/128 100\nprecedence ::1/128 50\n"
                    "precedence ::/0 40\nprecedence 2002::/16 30\nprecedence ::/96 20\n"
                    "precedence ::ffff:0:0/96 10\n")
    try:
        answer = subprocess.run(in_namespace(str(hosts), gai, ["getent", "ahosts", "etcd-multi"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("cannot run unshare: %s" % e)
    if answer.returncode != 0:
        pytest.skip("no private mount namespace here: %s"
                    % answer.stderr.decode("utf-8", "replace").strip())
    order = [line.split()[0] for line in answer.stdout.decode().splitlines()
             if line.split()[1:2] == ["STREAM"]]
    if order != ["127.0.0.2", "127.0.0.1"]:
        pytest.skip("getaddrinfo in the namespace gives %r, not 127.0.0.2 then 127.0.0.1"
                    % order)

    sockets = black_hole("127.0.0.2", port)
    try:
        config = write_config(str(tmp_path / "multi.conf"), {
            "host": "etcd-multi", "port": port, "lock_ttl": 3, "refresh": 0.5,
            "lock_name": lock_name, "api": "auto"})
        helper = Helper(in_namespace(str(hosts), gai, [HELPER, "-v", "-c", config]),
                        helper_env(stubs, tmp_path), str(tmp_path))
        started.append(helper)
        assert helper.status(timeout=6) == "0", helper.stderr()
        for where in held_apis("auto", etcd34):
            value = etcd34.value(where, key)
            assert value and "pid=%d" % helper.proc.pid in value, (where, value)
        assert helper.terminate() == 0
        for where in held_apis("auto", etcd34):
            assert etcd34.value(where, key) is None, where
    finally:
        for sock in sockets:
            sock.close()


def test_sigterm_while_the_v2_post_is_in_flight_leaves_nothing(etcd34, spawn, delay_proxy,
                                                              key):
    # The entry's POST is held up on its way; the helper is told to go
    # meanwhile.  Its release must not look for the entry before the POST
    # lands (and find nothing): the POST's own answer names it.
    proxy = delay_proxy(etcd34.port)
    proxy.delay, proxy.only = 0.5, b"POST /v2/keys"
    helper = spawn(port=proxy.port, api="v2", args=("-vv",))
    wait_for(lambda: "POST" in helper.stderr(), 5, "the helper to send its POST")
    helper.proc.send_signal(signal.SIGTERM)
    assert helper.wait(3) == 0
    assert helper.status(0.1) == ""
    # It waited for the POST's answer and deleted what the POST made, rather
    # than leave it blocking the lock for a TTL (3 s).
    assert re.search(r"our v2 entry %s/\d+ is gone already|gave back our v2 entry %s/"
                     % (key, key), helper.stderr()), helper.stderr()
    assert not etcd34.v2_entries(key)


@pytest.mark.parametrize("api", ["v2", "auto"])
def test_a_give_back_held_back_costs_the_1_one_second(etcd34, spawn, delay_proxy, key, api):
    """A contender's give-back (the v2 DELETE) that the network holds back
    has one second, all the locks of api = auto together: ctdbd's
    end-of-recovery check wants its '1' within 5 s."""
    holder = spawn(etcd34, api="v2")
    assert holder.status() == "0"
    proxy = delay_proxy(etcd34.port)
    proxy.delay, proxy.only = 20, b"DELETE"
    began = time.monotonic()
    other = spawn(port=proxy.port, api=api, handover_wait=0)
    assert other.status(timeout=10) == "1", other.stderr()
    took = time.monotonic() - began
    assert took < 1.8, "'1' came %.2fs after the start" % took
    assert other.wait() == 1
    assert holder.terminate() == 0
