#!/usr/bin/python3
# ctdb_etcd_lock: a CTDB cluster lock (mutex helper) kept in etcd.
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License as published by the Free
# Software Foundation, either version 3 of the License, or (at your option)
# any later version.  See the LICENSE file, or <https://www.gnu.org/licenses/>.
"""CTDB mutex helper that keeps the cluster lock in etcd.

ctdbd runs it from ctdb.conf (``cluster lock = !/usr/libexec/ctdb/ctdb_etcd_lock``)
and reads exactly one status character from its stdout:

    0  the lock is taken; the helper holds it until SIGTERM or its parent is gone
    1  contention: someone else holds the lock
    3  error: one line on stderr says what went wrong and what to do

Nothing else is ever written to stdout.  Errors are one line on stderr (it
lands in the CTDB log); success and contention are silent unless -v is given.

Design
------
The lock is one etcd key, /_locks/<locks_dir>/<lock_name>, whose value names
this holder (host, pnn, pid) and is unique to each try at the lock.

* v3 JSON gateway: a lease of lock_ttl seconds, the key put by a transaction
  that succeeds only if the key has never been created, the lease kept alive.
* v2 keys API: the original helper's layout (python-etcd's lock recipe).  The
  key is a directory; each attempt queues an in-order entry with a TTL, and
  the entry first by name holds the lock.  Ours is refreshed by
  compare-and-swap on our value and the entry's index, and released by
  compare-and-delete; a contender removes its entry before it says so.  Speaking the original's
  recipe, rather than a plain key, is what lets both run side by side: an
  original helper checking at the end of a recovery sees '1' (contention),
  where a plain key would make it fail with '3' and fail the recovery.
* api = auto holds the v3 key and, where the server still serves v2, the v2
  lock as well: the two keyspaces do not exclude each other, and helpers of
  the original kind only know v2.

Self-fencing.  The helper never keeps running past the moment its lock could
have expired on the server.  The lock is valid until the *send* time of the
request that set its TTL plus lock_ttl (the server started its TTL later
than that), counting only a request that no earlier one of ours can
overtake (see Lock); the helper gives the lock up a tenth of lock_ttl before
then.
Every request's timeout is cut to what is left, and a SIGALRM backstop ends
the process if anything still blocks.  Only local monotonic time is trusted
(CLOCK_BOOTTIME, which counts a suspend, where there is one), so clocks may
differ between hosts, but their rates must not differ by more than that
margin.  (A v2 TTL is kept on the etcd members' wall clocks: v2 also needs
those in step, without jumps.)  There is no fencing token: a holder that is
paused (say, SIGSTOP) longer than lock_ttl can wake up believing it holds
the lock for a moment, as with any lease.

Nothing may hold the helper up past that moment.  Signal handlers only take
note; the one poll() every wait goes through acts on them, and also watches
the parent and stdout's reader.  Log writes never block (ctdbd may stop
reading our stderr).  Every way out after '0' closes stdout first, and queues
the release behind any refresh still in flight, which would extend the lock.

Several members.  Each request goes to the member that answered last and
fails over to the next on a connection error, a timeout or a 5xx answer,
each try with a fair share of the same deadline; every request is safe to
send twice.  TLS and authentication live inside the same transport.  No
'0' before the lock's cluster is confirmed: every answer carries
expected_cluster_id, or else more than half of the listed members (by
member id) answered with the lock's cluster id; members not heard from are
asked again while holding, and one of another cluster ends the hold.

Handover.  A contender that finds the holder's lock running out (it missed
its refreshes: dead, paused or cut off) waits up to handover_wait for it to
expire and takes it, rather than saying '1' and costing CTDB an election.

Admin commands.  --status says who holds the lock, --check whether the
helper would work with its config; they print to stdout, and change nothing.

Settings (file $CTDB_BASE/etcd, ``key = value``; defaults in brackets):
    host [127.0.0.1] (a list, or python-etcd's tuple)  port [2379]
    protocol [http]  endpoints (URLs)  srv_domain  ca_cert  cert  key
    username  password  version_prefix [/v2]  read_timeout [60]
    lock_ttl [9]  refresh [2] (alias: lock_refresh)  locks_dir [_ctdb]
    lock_name [Samba's netbios name]  api [auto]  expected_cluster_id
    handover_wait [lock_ttl, at most 100]
"""

import os
import signal
import sys
import time

PROG = "ctdb_etcd_lock"
__version__ = "1.0.0"

# The one clock of every deadline and of the lock's life.  CLOCK_BOOTTIME
# goes on while the system is suspended (a laptop's suspend, a VM paused by
# its hypervisor), where CLOCK_MONOTONIC stands still: a holder resumed on
# it would count on a lock that expired long ago.  Python 3.7+ on Linux has
# it; elsewhere (3.6) monotonic time is the best there is.
if hasattr(time, "CLOCK_BOOTTIME"):
    def clock():
        return time.clock_gettime(time.CLOCK_BOOTTIME)  # novermin
else:
    clock = time.monotonic

STATUS_HELD = b"0"
STATUS_CONTENDED = b"1"
STATUS_ERROR = b"3"

# The lock is given up this share of lock_ttl before it could expire.
FENCE_SHARE = 0.1

# The longest handover wait: ctdbd's recovery daemon gives its helper 120 s
# to take the lock, and taking it after the wait needs time too.
HANDOVER_WAIT_MAX = 100


# ---------------------------------------------------------------------------
# Errors.  main() is the one place that turns them into a status character.

class EtcdLockError(Exception):
    """Base of every error this helper reports on its own terms."""


class ConfigError(EtcdLockError):
    """A setting, the config file or the command line is wrong."""


class TransportError(EtcdLockError):
    """etcd could not be reached, or answered in a way etcd would not."""


class EtcdError(EtcdLockError):
    """etcd answered with an error this helper has no use for: its HTTP
    ``status``, etcd's ``code``, the key it is about (v2's ``cause``) and
    etcd's own words (``detail``)."""

    def __init__(self, message, status=None, code=None, cause=None, detail=""):
        super().__init__(message)
        self.status = status
        self.code = code
        self.cause = cause
        self.detail = detail


class ApiNotServed(EtcdLockError):
    """The server does not serve the API a lock needs (v2 off, or no v3)."""


class AuthError(EtcdLockError):
    """etcd refused our credentials, or wants some (``detail``: etcd's words)."""

    def __init__(self, message, detail=""):
        super().__init__(message)
        self.detail = detail


class LockContended(EtcdLockError):
    """Someone else holds the lock: ``occupant`` (an Occupant) says who,
    and for how long; ``lock`` is the lock that found it; ``until``: the
    end of the time it had to give back what it took."""

    def __init__(self, occupant, lock=None, until=None):
        super().__init__(occupant.value)
        self.occupant = occupant
        self.lock = lock
        self.until = until


class LockLost(EtcdLockError):
    """The lock was held, but is not ours any more (or cannot be proved to be).

    ``fenced``: lost because no refresh got through in time (etcd silent),
    rather than because etcd said so.
    """

    def __init__(self, message, fenced=False):
        super().__init__(message)
        self.fenced = fenced


class Terminated(BaseException):
    """SIGTERM, SIGINT or another signal that would end us (Signals):
    give back what we hold and go."""


class ParentGone(BaseException):
    """Our original parent (ctdbd) is gone: give back what we hold and go."""


# ---------------------------------------------------------------------------
# Logging: one line per event on stderr; -v, -vv, -vvv add detail.
#
# ctdbd reads its helpers' stderr in its own event loop: a busy or wedged
# ctdbd stops draining it, and a helper blocked in a log write would neither
# refresh nor fence.  So a write never blocks: a line that cannot be written
# at once is dropped, and counted in the next line that can.

MAX_LINE = 1000  # characters of one log line; the rest is cut


class Log:
    fd = 2
    sock = None  # stderr as a socket (journald): sent with MSG_DONTWAIT
    pollable = False  # a pipe we could not reopen: write only when poll says so
    dropped = 0

    def __init__(self, verbose=0):
        self.verbose = verbose

    @classmethod
    def open(cls):
        """Make stderr writes non-blocking without touching ctdbd's end.

        O_NONBLOCK on fd 2 itself would change the open file description we
        share with whoever else writes the log; a pipe (or a terminal)
        opened again through /proc is a description of our own.
        """
        import stat
        try:
            mode = os.fstat(2).st_mode
        except OSError:
            return
        if stat.S_ISSOCK(mode):
            import socket
            try:
                cls.sock = socket.socket(fileno=os.dup(2))
            except OSError:
                cls.pollable = True
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                cls.fd = os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK
                                 | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                cls.pollable = stat.S_ISFIFO(mode)

    def error(self, message):
        self._write(message)

    def info(self, message):
        if self.verbose >= 1:
            self._write(message)

    def debug(self, message):
        if self.verbose >= 2:
            self._write(message)

    def trace(self, message):
        if self.verbose >= 3:
            self._write(message)

    @classmethod
    def _write(cls, message):
        line = "%s: %s" % (PROG, _printable(message[:MAX_LINE]))
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE - 3] + "..."
        if cls.dropped:
            line = "%s: (%d log lines dropped: stderr was full)\n%s" % (
                PROG, cls.dropped, line)
        # Within PIPE_BUF, a write to a pipe is all or nothing.
        data = line.encode("utf-8", "replace")[:4000] + b"\n"
        try:
            if cls.sock is not None:
                import socket
                sent = cls.sock.send(data, socket.MSG_DONTWAIT)
            elif cls.pollable and not _writable_now(cls.fd):
                raise BlockingIOError()
            else:
                sent = os.write(cls.fd, data)
        except BlockingIOError:
            cls.dropped += 1
            return
        except OSError:
            return
        if sent == len(data):
            cls.dropped = 0
        else:
            cls.dropped += 1  # the rest of the line is lost; say so next time


def _writable_now(fd):
    import select
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLOUT for _, events in poller.poll(0))


def _printable(text):
    """One line, whatever a file or etcd put in it."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _cut(text, limit=60):
    """Text from a file or a command, cut to a readable length for a message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown(value):
    """A value quoted in a message."""
    return _cut(repr(value))


# ---------------------------------------------------------------------------
# Settings.

class Setting:
    """One config key: its default, and how its text becomes a value."""

    def __init__(self, default, parse):
        self.default = default
        self.parse = parse


def _integer(low, high):
    def parse(text):
        if not (0 < len(text) <= 9 and text.strip("0123456789") == ""):
            raise ValueError("%s is not a whole number from %d to %d"
                             % (_shown(text), low, high))
        value = int(text)
        if not low <= value <= high:
            raise ValueError("%d is not between %d and %d" % (value, low, high))
        return value
    return parse


def _seconds(low, high=float("inf")):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise ValueError("%s is not a number of seconds" % _shown(text)) from None
        if not low <= value < float("inf"):
            raise ValueError("%s must be at least %g seconds" % (_shown(text), low))
        if value > high:
            raise ValueError("%s must be at most %g seconds" % (_shown(text), high))
        return value
    return parse


def _word(choices, hint=""):
    def parse(text):
        if text not in choices:
            raise ValueError("%s is not one of %s%s" % (
                _shown(text), ", ".join(choices), "; " + hint if hint else ""))
        return text
    return parse


def _cluster_id(text):
    if not 0 < len(text) <= 16 or text.strip("0123456789abcdefABCDEF"):
        raise ValueError("%s is not a cluster id in hex, as etcd's X-Etcd-Cluster-Id "
                         "header gives it" % _shown(text))
    return format(int(text, 16), "x")


MAX_NAME = 1024  # characters of locks_dir or lock_name: a longer one is a mistake


def _path_segments(what, allow_slash):
    """Names inside the etcd key: no empty part, no '.' or '..'."""
    def parse(text):
        if len(text) > MAX_NAME:
            raise ValueError("%s is longer than %d characters" % (_shown(text), MAX_NAME))
        parts = text.split("/") if allow_slash else [text]
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError("%s is not a usable %s (empty part, '.' or '..')"
                                 % (_shown(text), what))
        return text
    return parse


def _lock_name(text):
    if "/" in text:
        raise ValueError("%s must not contain '/'" % _shown(text))
    return _path_segments("lock name", False)(text)


def _prefix(text):
    import re
    if not re.match(r"(/[A-Za-z0-9._~-]+)+\Z", text) or len(text) > 100:
        raise ValueError("%s must be a URL path such as /v2: starting with '/', not "
                         "ending with one, of letters, digits and . _ ~ -" % _shown(text))
    return text


def _literal(text, what):
    """A Python literal, as python-etcd users wrote tuples and strings."""
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("%s is not a %s" % (_shown(text), what)) from None


def _unquoted(text):
    """A value without the quotes python-etcd users may have put around it."""
    if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
        value = _literal(text, "quoted string")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeError:
                raise ValueError("%s holds no text (a lone surrogate)" % _shown(text)) from None
            return value
    return text


def _boolean(text):
    if text.lower() in ("true", "yes", "on", "1"):
        return True
    if text.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("%s is not true or false" % _shown(text))


MAX_MEMBERS = 100  # an etcd cluster has 3, 5 or 7; more is a mistake


def _members(text):
    """host: one name or address, a comma list of host[:port] (IPv6 in
    brackets), or python-etcd's tuple of (host, port) pairs.  A list of
    (host, port or None)."""
    if text[:1] == "(" or text[:2] in ("[(", "[["):
        pairs = _literal(text, "tuple of (host, port) pairs")
        if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str):
            pairs = (pairs,)  # one pair alone
        if not (isinstance(pairs, (tuple, list)) and pairs
                and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in pairs)):
            raise ValueError("%s is not a tuple of (host, port) pairs" % _shown(text))
        if len(pairs) > MAX_MEMBERS:
            raise ValueError("%d members are more than %d" % (len(pairs), MAX_MEMBERS))
        return [(_host(str(host)), _integer(1, 65535)(str(port))) for host, port in pairs]
    if "://" in text:
        raise ValueError("%s: give host, host:port or [IPv6]:port, and no http:// "
                         "(URLs go in endpoints)" % _shown(text))
    items = text.split(",")
    if len(items) > MAX_MEMBERS:
        raise ValueError("%d members are more than %d" % (len(items), MAX_MEMBERS))
    return [(_host(host), port) for host, port in map(_split_host_port, map(str.strip, items))]


def _split_host_port(item):
    """'name', 'name:port', '[v6]', '[v6]:port' or a bare IPv6 address."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("%s is no [IPv6 address]:port" % _shown(item))
        return host, _integer(1, 65535)(rest[1:]) if rest else None
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host, _integer(1, 65535)(port)
    return item, None  # a name, IPv4, or IPv6 without a port


def _host(text):
    """A host name or address: no scheme, no port, no brackets."""
    if not text or len(text) > 253 or any(char in text for char in " /[]@,") \
            or not text.isprintable():
        raise ValueError("%s is no host name or address (give host, host:port or "
                         "[IPv6]:port, and no http://)" % _shown(text))
    if ":" in text:
        import socket
        try:
            socket.inet_pton(socket.AF_INET6, text)
        except OSError:
            raise ValueError("%s is no host name or address" % _shown(text)) from None
    try:  # as DNS and the Host header know it
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("%s is no host name" % _shown(text)) from None


def _urls(text):
    """endpoints: etcdctl's comma list of http:// or https:// URLs."""
    urls = []
    if text.count(",") >= MAX_MEMBERS:
        raise ValueError("more than %d members" % MAX_MEMBERS)
    for item in text.split(","):
        item = item.strip()
        scheme, colon, rest = item.partition("://")
        if not colon or scheme not in ("http", "https"):
            raise ValueError("%s is no http:// or https:// URL" % _shown(item))
        host, port = _split_host_port(rest[:-1] if rest.endswith("/") else rest)
        urls.append(Endpoint(scheme, _host(host), port or 2379))
    return urls


def _domain(text):
    if not text or len(text) > 253 or not all(
            0 < len(label) < 64 and all(char.isalnum() or char in "-_" for char in label)
            for label in text.rstrip(".").split(".")):
        raise ValueError("%s is no DNS domain" % _shown(text))
    return text


def _file(text):
    if not text or "\0" in text:
        raise ValueError("%s is no file name" % _shown(text))
    return text


def _cert(text):
    """cert: a PEM file holding certificate and key, or python-etcd's
    (certificate, key) tuple."""
    if text[:1] in "([":
        pair = _literal(text, "(certificate, key) tuple")
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(name, str) for name in pair)):
            raise ValueError("%s is no (certificate, key) tuple" % _shown(text))
        return tuple(_file(name) for name in pair)
    return (_file(text), None)


def _text(text):
    if not text:
        raise ValueError("it is empty")
    return text


class Endpoint:
    """One etcd member's client URL."""

    def __init__(self, scheme, host, port):
        self.scheme, self.host, self.port = scheme, host, port
        bracketed = "[%s]" % host if ":" in host else host
        self.netloc = "%s:%d" % (bracketed, port)  # also the Host header
        self.url = "%s://%s" % (scheme, self.netloc)

    def __repr__(self):
        return self.url

    def __eq__(self, other):
        return isinstance(other, Endpoint) and self.url == other.url

    def __hash__(self):
        return hash(self.url)


SETTINGS = {
    # etcd's members: host name(s) or address(es), the default port, scheme;
    # or endpoints (URLs, etcdctl's style); or found by DNS SRV.
    "host": Setting([("127.0.0.1", None)], _members),
    "port": Setting(2379, _integer(1, 65535)),
    "protocol": Setting("http", _word(("http", "https"))),
    "endpoints": Setting(None, _urls),
    "srv_domain": Setting(None, _domain),
    # TLS: the CA to verify etcd against (else the system's), our client
    # certificate and key.
    "ca_cert": Setting(None, _file),
    "cert": Setting(None, _cert),
    "key": Setting(None, _file),
    # Authentication: both or neither.
    "username": Setting(None, _text),
    "password": Setting(None, _text),
    # Where etcd serves the v2 API (python-etcd's version_prefix).
    "version_prefix": Setting("/v2", _prefix),
    # The longest wait for one answer; always cut to the lock's deadline.
    "read_timeout": Setting(60.0, _seconds(0.1)),
    # Whole seconds the lock lives on etcd without a refresh.
    "lock_ttl": Setting(9, _integer(2, 3600)),
    # Seconds between refreshes (the original's code read lock_refresh).
    "refresh": Setting(2.0, _seconds(0.1)),
    # The longest a contender waits for a holder whose lock is running out
    # (it missed its refreshes) before it says '1'; 0: never wait.  Unset:
    # lock_ttl, all a dead holder's lock can have left (see take()).
    "handover_wait": Setting(None, _seconds(0, HANDOVER_WAIT_MAX)),
    # The lock is /_locks/<locks_dir>/<lock_name>; the name defaults to
    # Samba's netbios name.
    "locks_dir": Setting("_ctdb", _path_segments("locks_dir", True)),
    "lock_name": Setting(None, _lock_name),
    # Which etcd API holds the lock: v2, v3, or auto (v3, and v2 where served).
    "api": Setting("auto", _word(("auto", "v2", "v3"))),
    # Refuse an etcd of another cluster (hex, as python-etcd took it).
    "expected_cluster_id": Setting(None, _cluster_id),
    # python-etcd's, not needed here: several members always fail over
    # (allow_reconnect), etcd redirects nothing we ask (allow_redirect), and
    # one connection is kept at a time (per_host_pool_size).
    "allow_reconnect": Setting(True, _boolean),
    "allow_redirect": Setting(True, _boolean),
    "per_host_pool_size": Setting(10, _integer(1, 1000)),
    # Proxies from the environment: never used (a proxy between ctdbd and
    # etcd is a surprise); true earns a warning.
    "use_proxies": Setting(False, _boolean),
}
# Names the original helper's code read for the same thing.
ALIASES = {"lock_refresh": "refresh"}


class Config:
    """The settings in force, each one parsed and checked once.

    Attributes carry the names of SETTINGS.  ``source`` is the file they came
    from (or None) and ``lines`` maps each setting given there to its line
    number, for messages.  Without lock_name, ``name_lock(file)`` names the
    lock (Samba's netbios name); ``lock_name_from`` says where the name came
    from ("lock_name", "testparm", or None: not named).
    """

    def __init__(self, values, source=None, lines=None, unknown=(), mode=0,
                 name_lock=None):
        for name, setting in SETTINGS.items():
            setattr(self, name, values.get(name, setting.default))
        if self.handover_wait is None:
            self.handover_wait = float(min(self.lock_ttl, HANDOVER_WAIT_MAX))
        self.source = source
        self.lines = dict(lines or {})
        self.lock_name_from = "lock_name" if self.lock_name else None
        # Warnings for the log.
        self.ignored = ["%s:%d: unknown setting %s is ignored" % (source, line, _cut(key))
                        for line, key in unknown]
        if self.use_proxies:
            self.ignored.append("%s: use_proxies is ignored: the helper always talks to "
                                "etcd directly" % self.where("use_proxies"))
        if self.password and mode & 0o077:
            self.ignored.append("%s holds a password that other users can read; "
                                "chmod 600 it" % source)
        self._check()
        self._check_key_file()
        self.endpoints = self._endpoints()
        if not self.lock_name and name_lock is not None:  # once the rest is right
            self.lock_name, self.lock_name_from = name_lock(self.file), "testparm"

    @property
    def file(self):
        """The config file, for messages that tell the admin where to look."""
        return self.source or "$CTDB_BASE/etcd"

    def where(self, name):
        """'FILE:LINE' of a setting, or where its default applies."""
        if name in self.lines:
            return "%s:%d" % (self.source, self.lines[name])
        return "%s (default %s)" % (self.file, name)

    def _check(self):
        # Relations between settings, each message naming both values.
        def clash(first, second, why):
            if first in self.lines and second in self.lines:
                raise ConfigError("%s: %s and %s (%s) %s" % (
                    self.where(first), first, second, self.where(second), why))
        for other in ("host", "port", "protocol", "srv_domain"):
            clash("endpoints", other, "do not go together: endpoints name the members "
                  "with their scheme and port")
        clash("srv_domain", "host", "do not go together: DNS SRV names the members")
        if isinstance(self.cert, tuple) and self.cert[1]:
            clash("cert", "key", "do not go together: cert already names the key")
        if self.key and not self.cert:
            raise ConfigError("%s: key without cert; give cert as well" % self.where("key"))
        if bool(self.username) != bool(self.password):
            given = "username" if self.username else "password"
            raise ConfigError("%s: %s without %s; give both or neither" % (
                self.where(given), given, "password" if self.username else "username"))
        where = self.where("refresh" if "refresh" in self.lines else "lock_ttl")
        if timing_problem(self.lock_ttl, self.refresh)[0] == "error":
            raise ConfigError("%s: refresh (%gs) must be less than %g%% of lock_ttl "
                              "(%ds), or the lock could not be refreshed in time; "
                              "e.g. refresh = %g" % (
                                  where, self.refresh, 100 * (1 - FENCE_SHARE),
                                  self.lock_ttl, self.lock_ttl / 4.0))

    def _check_key_file(self):
        """Our TLS key is a secret like the password: warn the same way when
        others may read its file (key, the tuple's key, or cert alone: a PEM
        holding the key too).  One we cannot stat is TLS's to report."""
        if not self.cert:
            return
        path = self.cert[1] or self.key or self.cert[0]
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            return
        if mode & 0o077:
            self.ignored.append("%s: the TLS key file %s can be read by other users; "
                                "chmod 600 it" % (self.where("key" if self.key else "cert"),
                                                  path))

    def _endpoints(self):
        """The members as given (None: found by DNS SRV when first asked)."""
        if self.srv_domain:
            return None
        if self.endpoints:
            return self.endpoints
        members = []
        for host, port in self.host:
            endpoint = Endpoint(self.protocol, host, port or self.port)
            if endpoint not in members:
                members.append(endpoint)
        return members

    @property
    def lock_key(self):
        """The lock's key, as etcd names it (before escaping)."""
        return "/_locks/%s/%s" % (self.locks_dir, self.lock_name)

    @property
    def fence_margin(self):
        """How long before the lock could expire the holder gives it up."""
        return self.lock_ttl * FENCE_SHARE


def timing_problem(lock_ttl, refresh, shortest=None):
    """The one rule for lock_ttl and refresh: (level, why).  "error": the
    holder could not refresh before its fence (no config may say so);
    "warning": one late refresh, or a leader election in etcd (etcd's
    shortest lease, where known, is one and a half election timeouts), would
    cost the lock.  The holder gives the lock up FENCE_SHARE of lock_ttl
    before it could expire."""
    margin = lock_ttl * (1 - FENCE_SHARE) - refresh
    if margin <= 0:
        return "error", ": the holder would give the lock up before its first refresh; " \
            "make refresh much shorter than lock_ttl"
    if shortest is not None and shortest > lock_ttl:
        return "warning", ": etcd stretches every lease to %d s, so a dead holder's lock " \
            "lives longer than lock_ttl" % shortest
    if refresh > lock_ttl / 3 or shortest is not None and margin < shortest:
        return "warning", ": a leader election in etcd, or two late refreshes, would cost " \
            "the lock; keep refresh at a third of lock_ttl or less"
    return "ok", ""


def read_config(path, required, name_lock=None):
    """Parse a ``key = value`` file into a Config (``name_lock``: see Config).

    A missing file gives the defaults unless ``required`` (the admin named it
    with -c).  Blank lines and lines starting with '#' or ';' are comments; so
    is the rest of a line from a '#' that follows white space.
    """
    try:
        data, mode = _read_small_file(path)
        text = data.decode("utf-8-sig")  # a BOM is no part of a key
    except FileNotFoundError:
        if required:
            raise ConfigError("config file %s does not exist; create it or fix -c"
                              % path) from None
        return Config({}, name_lock=name_lock)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read config file %s: %s; make it readable "
                          "UTF-8 text" % (path, getattr(e, "strerror", None) or e)) from None

    values, lines, unknown = {}, {}, []
    for number, line in enumerate(text.split("\n"), 1):  # as an editor counts them
        line = line.rstrip("\r")
        where = "%s:%d" % (path, number)
        line = _strip_comment(line).strip()
        if not line or line[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key:
            raise ConfigError("%s: %s" % (where, _malformed(line, equals)))
        name = ALIASES.get(key, key)
        setting = SETTINGS.get(name)
        if setting is None and _setting_word(key):
            raise ConfigError("%s: %s" % (where, _malformed(key, "")))
        if setting is None:
            # The original ignored what it did not know; say so, and go on.
            unknown.append((number, key if len(key.split()) == 1 else
                            key.split()[0] + " ..."))
            continue
        if name in values:
            raise ConfigError("%s: %s is set again (first at line %d); keep one"
                              % (where, key, lines[name]))
        try:
            values[name] = setting.parse(_unquoted(value))
        except ValueError as e:
            if name == "password":  # never shown, not even in part
                e = "not a usable password (a quote not closed?)"
            raise ConfigError("%s: bad %s: %s" % (where, key, e)) from None
        lines[name] = number
    return Config(values, path, lines, unknown, mode, name_lock)


def _setting_word(text):
    """The first word of text, less a trailing ':', if it names a setting."""
    words = text.split(None, 1)
    word = words[0].rstrip(":") if words else ""
    return word if ALIASES.get(word, word) in SETTINGS else None


def _malformed(text, equals):
    """What is wrong with a line that is no 'key = value'.  Only a known
    setting's name is quoted: the rest may be a password ('password:
    s3cret', 'password s3cret'), and nothing else of it ever is."""
    if equals:
        return "expected 'key = value', found nothing before '='"
    word = _setting_word(text)
    if word:
        return "expected 'key = value', found %s without '=' right after it; write " \
               "'%s = ...' (the rest of the line is not shown)" % (word, word)
    return "expected 'key = value', found a line without '=' (not shown: it may " \
           "hold a secret)"


MAX_CONFIG = 64 << 10  # bytes: a config file is a handful of lines


def _read_small_file(path):
    """A regular file's bytes and mode; never waits on a FIFO or reads a device."""
    import stat
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError("config file %s is not a regular file; name one with -c"
                              % path)
        data = b""
        while len(data) <= MAX_CONFIG:
            chunk = os.read(fd, MAX_CONFIG + 1 - len(data))
            if not chunk:
                return data, mode
            data += chunk
        raise ConfigError("config file %s is bigger than %d KiB; is it the right file?"
                          % (path, MAX_CONFIG >> 10))
    finally:
        os.close(fd)


def _strip_comment(line):
    for i, char in enumerate(line):
        if char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


# ---------------------------------------------------------------------------
# Waiting.  Every wait of the helper -- for etcd, for testparm, between
# refreshes -- is one poll() here, which also watches why we might have to
# go: a signal, our parent's end, stdout's reader gone.  Those are raised as
# Terminated or ParentGone from here alone, a point where the code around
# expects them; a signal handler only takes note and wakes the poll.

class _NoTime(Exception):
    """The deadline came."""


class Signals:
    """Every signal whose default action ends a process (SIGTERM, SIGINT,
    SIGHUP, SIGUSR1, ...): noted by the handler, acted on by Watch.wait().
    Left to that default, one would kill a holder outright, the lock left
    for up to lock_ttl."""

    # Not SIGALRM (the backstop's), nor the synchronous faults (SEGV, BUS,
    # ILL, FPE, ABRT, TRAP, SYS), which must end us as they would; Python
    # ignores SIGPIPE.  Also every real-time signal.
    ENDING = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGVTALRM",
              "SIGPROF", "SIGIO", "SIGPWR", "SIGXCPU", "SIGXFSZ", "SIGSTKFLT")

    received = None  # the first signal's number
    at = None  # when the latest came (clock())
    wakeup = None  # read end of the pipe a signal writes a byte to
    caught = frozenset((signal.SIGTERM, signal.SIGINT))  # all of them, once catch() ran

    @classmethod
    def catch(cls):
        try:
            valid = set(signal.valid_signals())  # novermin (Python 3.8+)
        except AttributeError:
            valid = set(range(1, signal.NSIG))
        wanted = {getattr(signal, name) for name in cls.ENDING if hasattr(signal, name)}
        if hasattr(signal, "SIGRTMIN") and hasattr(signal, "SIGRTMAX"):
            wanted.update(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
        caught = set()
        for signum in sorted(valid & wanted):
            try:
                signal.signal(signum, cls._note)
            except (OSError, ValueError, RuntimeError):
                continue  # kept by the C library (glibc's 32 and 33)
            caught.add(signum)
        cls.caught = frozenset(caught | cls.caught)
        # A mask inherited from whoever started us must not keep them (or
        # the backstop's SIGALRM) from us.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, cls.caught | {signal.SIGALRM})

    @classmethod
    def wake_waits(cls):
        """Let a signal wake a poll (after fds 0-2 are settled: this takes two)."""
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:  # Python 3.7+ need not warn should the pipe ever fill
                signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)  # novermin
            except TypeError:
                signal.set_wakeup_fd(write_end)
            cls.wakeup = read_end
        except (AttributeError, OSError, ValueError):
            pass  # no wakeup: polls wake every Watch.POLL seconds to look

    @classmethod
    def _note(cls, signum, frame):
        cls.received = cls.received or signum
        cls.at = clock()


class Watch:
    """What every wait watches besides what it waits for.

    ``ppid`` is our original parent (ctdbd, or its recovery daemon).  PID 1
    is never watched (cluster_mutex_helper.txt): a parent that is 1 already
    means ours died before we started, unless PID 1 is ctdbd itself, as in a
    container.  ``stdout`` is watched when it is a pipe: a reader gone means
    nobody can hear us.  Once ``leave()`` is called, nothing is raised any
    more, and a signal only cuts what is left of the wait to
    LEAVE_AFTER_SIGNAL seconds.
    """

    POLL = 0.25  # seconds between parent checks where no pidfd is to be had
    LEAVE_AFTER_SIGNAL = 2.0

    def __init__(self, ppid, stdout=None, clock=clock):
        self.ppid = ppid
        self.clock = clock
        self.orphan = ppid == 1 and _comm(1) != "ctdbd"
        self.armed = ppid > 1
        self.stdout = stdout
        self.leaving = False
        self.fd = None
        if self.armed:
            # A pidfd turns "parent gone" into an event (Linux 5.3+, Python
            # 3.9+); elsewhere, poll.
            try:
                self.fd = os.pidfd_open(ppid)  # novermin
            except (AttributeError, OSError):
                self.fd = None

    def gone(self):
        return self.armed and os.getppid() != self.ppid

    def leave(self):
        """From here on we are on our way out: let nothing interrupt that."""
        self.leaving = True
        self.armed = False
        self.stdout = None

    def check(self):
        """Raise Terminated if a signal came; for the steps between waits."""
        if Signals.received and not self.leaving:
            raise Terminated(Signals.received)

    def wait(self, deadline, readers=(), writers=()):
        """Wait until a reader or writer is ready: the list of ready fds.

        Raises _NoTime at the deadline, Terminated on a signal, ParentGone
        when the parent or stdout's reader is gone.
        """
        import select
        while True:
            self.check()
            if self.leaving and Signals.at is not None:
                deadline = min(deadline, Signals.at + self.LEAVE_AFTER_SIGNAL)
            left = deadline - self.clock()
            if left <= 0:
                raise _NoTime()
            if (self.armed and self.fd is None) or Signals.wakeup is None:
                left = min(left, self.POLL)
            poller = select.poll()
            for fd in readers:
                poller.register(fd, select.POLLIN)
            for fd in writers:
                poller.register(fd, select.POLLOUT)
            watched = [fd for fd in (Signals.wakeup, self.fd if self.armed else None)
                       if fd is not None]
            for fd in watched:
                poller.register(fd, select.POLLIN)
            if self.stdout is not None:
                poller.register(self.stdout, 0)  # only POLLERR: no reader left
            # ceil: a wait rounded down to 0 ms would spin until the deadline.
            events = dict(poller.poll(int(left * 1000) + 1))
            if Signals.wakeup in events:
                _drain(Signals.wakeup)
            self.check()
            if self.armed and (self.fd in events or self.gone()):
                self.leave()
                raise ParentGone("parent gone")
            if self.stdout in events:
                self.leave()
                raise ParentGone("nobody reads stdout")
            ready = [fd for fd in events if fd not in watched and fd != self.stdout]
            if ready:
                return ready

    def sleep(self, seconds):
        """Sleep, still watching."""
        try:
            self.wait(self.clock() + seconds)
        except _NoTime:
            pass


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name of its own
        return "signal %d" % signum


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Who we are: the lock's name and the holder's value.

MAX_OUTPUT = 65536  # bytes we read from testparm or ctdb


def run_quietly(argv, timeout, watch):
    """stdout of a command, or None if it fails, is missing, says too much or
    does not finish within timeout seconds.  Waited for through the watch: a
    signal or our parent's end kills it (with its own children: it runs in a
    process group of its own), and is raised here."""
    import subprocess
    deadline = watch.clock() + timeout
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    out, reading, pause, grace = b"", True, 0.001, None
    try:
        pipe = child.stdout.fileno()
        os.set_blocking(pipe, False)
        # Until its stdout ends and it has exited.  No pidfd everywhere for
        # the exit: a short poll, growing.
        while reading or child.poll() is None:
            if grace is None and child.poll() is not None:
                # It has exited; something it left behind may hold its
                # stdout open: what it said so far is all it says.
                grace = watch.clock() + 0.1
            until = min(deadline, grace or deadline)
            if watch.clock() >= until:
                if grace is not None and until < deadline:
                    break
                return None
            try:
                watch.wait(min(until, watch.clock() + pause), readers=[pipe] if reading else [])
            except _NoTime:
                pause = min(pause * 2, 0.05)
                continue
            chunk = os.read(pipe, MAX_OUTPUT)
            if not chunk:
                reading, pause = False, 0.0005  # its exit is near: look often
                continue
            out += chunk
            if len(out) > MAX_OUTPUT:
                return None
    except (_NoTime, OSError):
        return None
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # what it left behind, too
        except OSError:
            pass
        child.wait()
        child.stdout.close()
    if child.returncode != 0:
        return None
    return out.decode("utf-8", "replace").strip()


def netbios_name(config_file, watch):
    """The lock's name where the config gives none: Samba's netbios name,
    from testparm."""
    # Within ctdbd's 5 s for an end-of-recovery check, with time for etcd.
    name = run_quietly(["testparm", "-s", "--parameter-name", "netbios name"], 3, watch)
    name = name.splitlines()[0].strip() if name else ""
    if not name:
        raise ConfigError("cannot name the lock: testparm gave no netbios name (it "
                          "failed, took over 3s or said too much); set lock_name in %s "
                          "(the same on every node)" % config_file)
    try:
        return _lock_name(name)
    except ValueError as e:
        raise ConfigError("netbios name from testparm is no usable lock name: %s; "
                          "set lock_name in %s" % (e, config_file))


def our_value(watch):
    """This holder, as etcdctl and the logs show it; unique per acquisition."""
    pnn = run_quietly(["ctdb", "pnn"], 2, watch)
    pnn = pnn if pnn and pnn.isdigit() else "?"
    return "host=%s pnn=%s pid=%d id=%s" % (
        os.uname().nodename, pnn, os.getpid(), os.urandom(8).hex())


def next_value(value):
    """The holder's value for a new try at the lock (after a handover wait):
    a new id, so that nothing a request of an earlier try left behind --
    a POST or a put that a slow member applies late -- can pass for this
    try's, and be timed from this try's sends."""
    return "%s id=%s" % (value.rpartition(" id=")[0] or value, os.urandom(8).hex())


# ---------------------------------------------------------------------------
# Transport: HTTP/1.1 (and TLS) to etcd's members, every request bounded by a deadline.

class Response:
    def __init__(self, status, headers, body, endpoint):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body
        self.endpoint = endpoint

    def json(self):
        """The body as a JSON object, or TransportError if etcd would not say it."""
        import json
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            data = None
        if not isinstance(data, dict):
            raise TransportError("%s answered HTTP %d with a body that is not etcd's "
                                 "JSON (%r); check that host and port name etcd's "
                                 "client URL" % (self.endpoint, self.status,
                                                 self.body[:60]))
        return data


def _fair_share(deadline, now, untried):
    """What is left until the deadline, split evenly among the tries not
    made yet: one that hangs (an address that drops packets, a member
    paused) must not eat the time of the next."""
    return (deadline - now) / untried


class _Closed(Exception):
    """The server closed (or reset) a kept-alive connection before answering."""


class _Never(Exception):
    """Stands in for the TLS layer's would-block errors on a plain socket."""


class Connection:
    """One HTTP/1.1 connection to one member, plain or TLS.  Every wait ends
    by an absolute deadline (clock()), not merely each recv: a
    server that trickles bytes, or a TLS handshake, cannot hold a request
    past the lock's deadline.

    Small on purpose: etcd answers with Content-Length or chunked bodies,
    and http.client would cost modules we have no use for.
    """

    # The biggest answer we read.  etcd takes requests of up to
    # --max-request-bytes (1.5 MiB by default), so a value anyone may put on
    # the lock's key is that big; the v3 gateway answers it in base64 (4/3:
    # 2 MiB), inside JSON, with 64 KiB for the rest of the answer.  (A v2
    # listing gives values as JSON text: ours are a few dozen bytes each.)
    # Parsed JSON may take 30 times its size in memory (a hostile answer of
    # empty lists: a peak of about 80 MiB at this cap), so no more.
    ETCD_MAX_REQUEST = 1572864
    MAX_ANSWER = ETCD_MAX_REQUEST * 4 // 3 + (64 << 10)
    MAX_CHUNKS = 1000  # etcd sends a handful; parsing many again and again costs

    def __init__(self, endpoint, addresses, deadline, clock, watch, tls=None):
        import socket
        self.endpoint = endpoint
        self.clock = clock
        self.watch = watch
        self.buffer = b""
        self.head = b""  # the first bytes ever received, to tell what answered
        self.used = False  # a kept-alive connection etcd may have closed meanwhile
        self.sent = False  # a request is sent and not answered yet
        self.want_read = self.want_write = _Never
        error = OSError("no address to connect to")
        for tried, (family, kind, proto, _, address) in enumerate(addresses):
            share = _fair_share(deadline, clock(), len(addresses) - tried)
            try:
                self.sock = socket.socket(family, kind, proto)
            except OSError as e:  # e.g. IPv6 switched off: the next address
                error = e
                continue
            self.sock.setblocking(False)
            try:
                self._connect(address, min(deadline, clock() + share))
                break
            except OSError as e:  # the next address, with what time is left
                self.sock.close()
                error = e
            except _NoTime:
                self.sock.close()
                if clock() >= deadline:
                    raise
                error = OSError("%s did not answer within %.1fs" % (address[0], share))
            except BaseException:
                self.sock.close()
                raise
        else:
            raise error
        if tls is not None:
            import ssl
            self.want_read, self.want_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=endpoint.host,
                                            do_handshake_on_connect=False)
                self._io(self.sock.do_handshake, deadline, write=False)
            except BaseException:
                self.sock.close()
                raise

    def _connect(self, address, deadline):
        import errno
        import socket
        code = self.sock.connect_ex(address)
        if code == errno.EINPROGRESS:
            self._wait(deadline, write=True)
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))

    def close(self):
        """Close without a reset: a reset (sent when answers lie unread) may
        cost etcd the requests it has not read yet."""
        try:
            for _ in range(64):  # what has come; a flood is not ours to read
                if not self.sock.recv(65536):
                    break
        except OSError:
            pass
        self.sock.close()

    def send_now(self, request):
        """Queue a request behind whatever is in flight, if it fits at once."""
        try:
            return self.sock.send(request) == len(request)
        except OSError:
            return False

    def _wait(self, deadline, write=False):
        fd = self.sock.fileno()
        self.watch.wait(deadline, readers=[] if write else [fd], writers=[fd] if write else [])

    def _io(self, operation, deadline, write):
        """A socket operation, tried first (TLS may hold decrypted bytes
        already) and waited for while it would block."""
        while True:
            try:
                return operation()
            except BlockingIOError:
                self._wait(deadline, write)
            except self.want_read:
                self._wait(deadline)
            except self.want_write:
                self._wait(deadline, write=True)

    @staticmethod
    def encode(method, host, path, headers, body):
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host,
                 "Content-Length: %d" % len(body or b"")]
        lines += ["%s: %s" % item for item in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def exchange(self, request, deadline):
        """Send one request; (status, headers, body, keep_alive)."""
        reused, self.used = self.used, True
        self.sent = False  # True: etcd may act on it, answered or not
        try:
            self._send(request, deadline)
            self.sent = True
            return self.answer(deadline, first=reused)
        except (ConnectionResetError, BrokenPipeError):
            if reused and not self.buffer:
                raise _Closed() from None
            raise

    def answer(self, deadline, first=False):
        """The answer to the request in flight.  Bytes stay in the buffer
        until the whole answer is there, so a wait that was cut short (a
        deadline, a signal) can be taken up again later."""
        while True:
            answer = self._parse(eof=False)
            if answer is None and not self._fill(deadline, first, eof_ok=True):
                answer = self._parse(eof=True)
                if answer is None:
                    raise ValueError("answer cut short")
            if answer is not None:
                self.sent = False  # answered
                return answer

    def _parse(self, eof):
        """(status, headers, body, keep_alive) if the buffer holds a whole
        answer (consumed then), else None."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 65536:
                raise ValueError("header too long")
            return None
        lines = buffer[:end].split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError("not an HTTP answer: %r" % lines[0][:40])
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError("bad header line %r" % line[:40])
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        keep_alive = parts[0] == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        at = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while True:
                eol = buffer.find(b"\r\n", at)
                if eol < 0:
                    return None
                size = buffer[at:eol].split(b";")[0].strip()
                if not 0 < len(size) <= 8 or size.strip(b"0123456789abcdefABCDEF"):
                    raise ValueError("bad chunk size %r" % size[:20])
                if len(chunks) >= self.MAX_CHUNKS:
                    raise ValueError("answer in over %d chunks" % self.MAX_CHUNKS)
                size, at = int(size, 16), eol + 2
                if size == 0:
                    while True:  # trailers, up to the blank line
                        eol = buffer.find(b"\r\n", at)
                        if eol < 0:
                            return None
                        line, at = buffer[at:eol], eol + 2
                        if not line:
                            break
                    break
                total += size
                if total > self.MAX_ANSWER:
                    raise ValueError("answer too long")
                if len(buffer) < at + size + 2:
                    return None
                if buffer[at + size:at + size + 2] != b"\r\n":
                    raise ValueError("chunk without its CRLF")
                chunks.append(buffer[at:at + size])
                at += size + 2
            body = b"".join(chunks)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= self.MAX_ANSWER:
                raise ValueError("answer of %d bytes" % length)
            if len(buffer) < at + length:
                return None
            body, at = buffer[at:at + length], at + length
        elif eof:  # the body ends where the connection does
            body, at, keep_alive = buffer[at:], len(buffer), False
        else:
            return None
        self.buffer = buffer[at:]
        return int(parts[1]), headers, body, keep_alive

    def _send(self, data, deadline):
        while data:
            data = data[self._io(lambda: self.sock.send(data), deadline, write=True):]

    def _fill(self, deadline, first=False, eof_ok=False):
        """Read more into the buffer; False at the end of the stream (if eof_ok)."""
        chunk = self._io(lambda: self.sock.recv(65536), deadline, write=False)
        if not chunk:
            if first and not self.buffer:
                raise _Closed()
            if eof_ok:
                return False
            raise ValueError("answer cut short")
        self.buffer += chunk
        if len(self.head) < 100:
            self.head += chunk[:100]
        if len(self.buffer) > self.MAX_ANSWER + 65536:
            raise ValueError("answer too long")
        return True

    def _exactly(self, length, deadline):
        while len(self.buffer) < length:
            self._fill(deadline)
        data, self.buffer = self.buffer[:length], self.buffer[length:]
        return data


def _tls_failure(error, endpoint, config):
    """What a TLS error means, in an admin's words; None if it is no TLS error."""
    reason = (getattr(error, "verify_message", None) or getattr(error, "reason", None)
              or str(error))
    text = str(reason).lower() + " " + str(error).lower()
    if type(error).__name__ == "CertificateError" or "mismatch" in text:
        return "TLS: the certificate of %s does not name %s (%s); connect by a name it " \
               "holds" % (endpoint.url, endpoint.host, _cut(str(reason), 120))
    if "expired" in text:
        return "TLS: the certificate of %s has expired" % endpoint.url
    if "verify" in text or "issuer" in text or "self signed" in text or "self-signed" in text:
        return "TLS: the certificate of %s is not signed by a known CA (%s); check " \
               "ca_cert in %s" % (endpoint.url, reason, config.file)
    if "wrong_version" in text or "wrong version" in text or "http_request" in text \
            or "record layer" in text or "packet length" in text:
        return "%s does not speak TLS; use http:// there" % endpoint.url
    if "certificate" in text or "handshake" in text or "alert" in text:
        return "TLS: %s refused us (%s); it may want a client certificate: check cert " \
               "and key in %s" % (endpoint.url, _cut(str(reason), 80),
                                  config.file)
    if type(error).__module__ == "ssl" or type(error).__name__.startswith("SSL"):
        return "TLS with %s failed: %s" % (endpoint.url, _cut(str(reason), 120))
    return None


def _addresses(endpoint, watch, deadline):
    """getaddrinfo for a member.  A resolver cannot be interrupted, so a
    name is resolved in a thread of its own, waited for through the watch,
    and left behind should we have to go."""
    import socket
    try:  # an address needs no resolver
        return socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    import threading
    answer = []

    def resolve():
        # Signals are the main thread's: one delivered here at exit, when
        # Python has given them back their default action, would kill us.
        signal.pthread_sigmask(signal.SIG_BLOCK, Signals.caught | {signal.SIGALRM})
        try:
            answer.append(socket.getaddrinfo(endpoint.host, endpoint.port,
                                             type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as e:
            answer.append(e)
    threading.Thread(target=resolve, daemon=True).start()
    pause = 0.0005
    while not answer:
        if watch.clock() >= deadline:
            raise OSError(0, "no answer from the resolver in time")
        watch.sleep(min(pause, deadline - watch.clock()))
        pause = min(pause * 2, 0.05)
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


class _MemberFailed(Exception):
    """One member did not answer; ``sent``: the request may have reached it."""

    def __init__(self, message, sent=False):
        super().__init__(message)
        self.sent = sent


# DNS SRV: members as etcd publishes them (srv_domain), asked with a small
# client of our own, so that every wait goes through the watch.  The system
# resolver has no SRV lookup in the standard library.

SRV_RECORDS = (("_etcd-client-ssl._tcp", "https"), ("_etcd-client._tcp", "http"),
               ("_etcd._tcp", None))  # python-etcd's, with protocol's scheme


def srv_members(config, watch, deadline):
    """Endpoints from the SRV records of srv_domain: by record kind, then
    priority (lowest first) and weight (highest first)."""
    resolver = Resolver.from_file("/etc/resolv.conf")
    domain = config.srv_domain
    names = [domain] if domain.endswith(".") or not resolver.search else \
        [domain] + ["%s.%s" % (domain, suffix) for suffix in resolver.search]
    asked, problems = [], []
    for name in names:
        endpoints = []
        for record, scheme in SRV_RECORDS:
            qname = "%s.%s" % (record, name.rstrip("."))
            asked.append(qname)
            try:
                answers = resolver.srv(qname, watch, deadline)
            except ValueError as e:
                problems.append("%s: %s" % (qname, e))
                continue
            for priority, weight, port, target in sorted(
                    answers, key=lambda srv: (srv[0], -srv[1])):
                if not target:
                    continue
                try:  # the checks a host in the config gets
                    target = _host(target)
                except ValueError:
                    raise TransportError("DNS SRV record %s names target %s, which is no "
                                         "host name; fix the DNS" % (
                                             qname, _shown(target))) from None
                endpoint = Endpoint(scheme or config.protocol, target, port)
                if endpoint not in endpoints:
                    endpoints.append(endpoint)
        if len(endpoints) > MAX_MEMBERS:
            raise TransportError("DNS SRV records of %s name %d members, more than %d; fix "
                                 "the DNS" % (name, len(endpoints), MAX_MEMBERS))
        if endpoints:
            return endpoints
    raise TransportError("no etcd members found by DNS SRV for %s: asked %s%s; check "
                         "srv_domain in %s and the DNS" % (
                             domain, ", ".join(asked[:3]) + (" and more" if asked[3:] else ""),
                             " (%s)" % "; ".join(problems[:3]) if problems else
                             " (no records)", config.where("srv_domain")))


class Resolver:
    """Asks /etc/resolv.conf's nameservers: UDP, then TCP when the answer
    is truncated; honours its search list and 'options timeout: attempts:'."""

    def __init__(self, servers, search, timeout, attempts):
        self.servers = servers or ["127.0.0.1"]
        self.search = search
        self.timeout = timeout
        self.attempts = attempts

    @classmethod
    def from_file(cls, path):
        servers, search, timeout, attempts = [], [], 5.0, 2
        try:
            text = _read_small_file(path)[0].decode("utf-8", "replace")
        except (OSError, ConfigError):
            text = ""
        for line in text.splitlines():
            words = line.split("#")[0].split(";")[0].split()
            if len(words) < 2:
                continue
            if words[0] == "nameserver" and len(servers) < 3:
                servers.append(words[1])
            elif words[0] in ("search", "domain"):
                search = [word.rstrip(".") for word in words[1:]]
            elif words[0] == "options":
                for option in words[1:]:
                    name, _, value = option.partition(":")
                    if name == "timeout" and value.isdigit():
                        timeout = max(1, min(int(value), 30))
                    elif name == "attempts" and value.isdigit():
                        attempts = max(1, min(int(value), 5))
        return cls(servers, search, timeout, attempts)

    def srv(self, name, watch, deadline):
        """[(priority, weight, port, target)]; [] for no such name or no
        records; ValueError if no nameserver answered sensibly."""
        import random
        import struct
        query_id = random.getrandbits(16)
        query = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) \
            + _dns_name(name) + struct.pack(">HH", 33, 1)  # SRV, IN
        trouble = "no nameserver answered"
        for _ in range(self.attempts):
            for server in self.servers:
                until = min(deadline, watch.clock() + self.timeout)
                try:
                    answer = _dns_exchange(server, query, watch, until, tcp=False)
                    if answer is not None and struct.unpack(">H", answer[2:4])[0] & 0x0200:
                        answer = _dns_exchange(server, query, watch, until, tcp=True)
                    if answer is None:
                        continue
                    return _srv_answers(answer, query_id)
                except _NoTime:
                    if watch.clock() >= deadline:
                        raise ValueError(trouble) from None
                except (OSError, ValueError, IndexError, struct.error) as e:  # UnicodeError too
                    trouble = "%s answered %s" % (server, getattr(e, "strerror", None) or e)
        raise ValueError(trouble)


def _dns_name(name):
    labels = [label.encode("idna") for label in name.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _dns_exchange(server, query, watch, deadline, tcp):
    """One query to one nameserver; the answer, or None on silence."""
    import socket
    import struct
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        conn = Connection(Endpoint("dns", server, 53),
                          [(family, socket.SOCK_STREAM, 0, "", (server, 53))],
                          deadline, watch.clock, watch)
        try:
            conn._send(struct.pack(">H", len(query)) + query, deadline)
            size = struct.unpack(">H", conn._exactly(2, deadline))[0]
            return conn._exactly(size, deadline)
        finally:
            conn.close()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((server, 53))
        sock.send(query)
        while True:
            try:
                watch.wait(deadline, readers=[sock.fileno()])
            except _NoTime:
                return None
            try:
                answer = sock.recv(65535)
            except BlockingIOError:
                continue
            if answer[:2] == query[:2]:  # not some stray datagram
                return answer


def _srv_answers(message, query_id):
    import struct
    ident, flags, questions, answers = struct.unpack(">HHHH", message[:8])
    if ident != query_id or not flags & 0x8000:
        raise ValueError("something that is no answer to our question")
    rcode = flags & 0x000F
    if rcode == 3:  # NXDOMAIN
        return []
    if rcode != 0:
        raise ValueError("DNS error %d" % rcode)
    offset = 12
    for _ in range(questions):
        _, offset = _dns_read_name(message, offset)
        offset += 4
    records = []
    for _ in range(answers):
        _, offset = _dns_read_name(message, offset)
        kind, _, _, length = struct.unpack(">HHIH", message[offset:offset + 10])
        offset += 10
        if kind == 33:
            priority, weight, port = struct.unpack(">HHH", message[offset:offset + 6])
            target, _ = _dns_read_name(message, offset + 6)
            if target and port:  # "." means: no service here
                records.append((priority, weight, port, target))
        offset += length
    if offset > len(message):
        raise ValueError("an answer cut short")
    return records


def _dns_read_name(message, offset):
    """(name, offset after it), following compression pointers."""
    labels, end, jumps = [], None, 0
    while True:
        length = message[offset]
        if length & 0xC0 == 0xC0:
            jumps += 1
            if jumps > 20:
                raise ValueError("a name that loops")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        if length == 0:
            break
        label = message[offset + 1:offset + 1 + length]
        if len(label) < length:
            raise ValueError("a name cut short")
        labels.append(label.decode("ascii"))  # UnicodeError: a broken answer
        offset += 1 + length
    return ".".join(labels), end if end is not None else offset + 1


class Transport:
    """Requests to etcd's members, over one kept-alive connection at a time.

    ``deadline`` on each request is a clock() value; the request
    never waits past it nor past read_timeout.  A request goes to the member
    that answered last and fails over to the next on a connection error, a
    timeout, a 5xx or a "no leader" answer; each try gets a fair share of
    what is left, so one dead, paused or cut-off member never eats the
    time.  Names (and SRV records) are resolved once, before the lock is
    taken: a resolver cannot be interrupted, so it must not stand between a
    holder and its deadline.

    A request sent but not answered by its deadline may still reach etcd
    later (a slow network delivers it all the same), and a late refresh
    would extend the lock: its connection is kept aside, so that release()
    can queue its compare-and-delete behind it (``behind``), and TCP
    delivers the two in order.
    """

    IN_FLIGHT = 4  # connections kept aside; an older one is closed
    FIRST_LOOK = 0.5  # seconds: the first ask of each member not heard from, at most
    LEAST_ASK = 0.05  # seconds: while holding, no ask with less time than this left

    def __init__(self, config, log, watch, clock=clock):
        self.config = config
        self.log = log
        self.watch = watch
        self.clock = clock
        self.members = None  # [[endpoint, addresses or None]], once known
        self.current = 0  # the member that answered last
        self.cluster_id = None  # as the first member to answer gave it
        self.agreeing = {}  # member URL -> its member id, for those in that cluster
        self.not_heard = {}  # member URL -> why it has not answered (for messages)
        self._next_ask = 0  # asks of members not heard from go round the list
        self.unanswered = 0  # requests sent that went unanswered (they may act yet)
        self.without_v2 = {}  # member index -> its answer that it serves no v2
        # The v3 lock's token, if it has one: etcd 3.5.28+ tells a member's
        # cluster (maintenance status) only to an authenticated user; and how
        # to get a new one when a member says it is old or invalid.
        self.token = None
        self.reauthenticate = None
        self.renewed = False  # asks of members got their one new token (then the lock's do)
        self._tls = None
        self._conn = None
        self._in_flight = []

    @property
    def endpoint(self):
        """The member asked now, for messages."""
        if self.members:
            return self.members[self.current][0].url
        return self.config.endpoints[0].url if self.config.endpoints else \
            "DNS SRV of %s" % self.config.srv_domain

    def close(self):
        """Close every connection, those with requests in flight too."""
        for conn in self._in_flight + [self._conn]:
            if conn is not None:
                conn.close()
        self._conn, self._in_flight = None, []

    def _drop(self, in_flight=True):
        """The current connection is out of step with its answers."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.sent and in_flight:
            self._in_flight.append(conn)
            if len(self._in_flight) > self.IN_FLIGHT:
                self._in_flight.pop(0).close()
        else:
            conn.close()

    def check_cluster(self, cluster_id, endpoint, member_id=None):
        """Every member must belong to one cluster (expected_cluster_id, if
        set).  ``member_id``: the member's own id, where the answer gives it
        (v3 answers do, v2 answers do not)."""
        if not cluster_id:
            return
        expected = self.config.expected_cluster_id
        if expected and cluster_id != expected:
            raise EtcdLockError("etcd at %s belongs to cluster %s, not expected_cluster_id "
                                "%s (%s); check the members you list" % (
                                    endpoint, cluster_id, expected,
                                    self.config.where("expected_cluster_id")))
        if self.cluster_id is None:
            self.cluster_id = (cluster_id, endpoint)
        elif cluster_id != self.cluster_id[0]:
            raise EtcdLockError("etcd at %s belongs to cluster %s, but %s to cluster %s; "
                                "list the members of one cluster only" % (
                                    endpoint, cluster_id, self.cluster_id[1],
                                    self.cluster_id[0]))
        if member_id or endpoint not in self.agreeing:
            self.agreeing[endpoint] = member_id or self.agreeing.get(endpoint)
        if self.agreeing[endpoint]:
            self.not_heard.pop(endpoint, None)

    def confirmed(self):
        """Whether there is reason to believe that the member the lock was
        taken through belongs to the cluster the config means: every answer
        matched expected_cluster_id, or more than half of the listed members
        answered with its cluster id, each a member of its own (by member
        id: one listed under two names, or two clusters built alike from
        etcd's defaults, whose ids are the same, count once).  Two nodes
        that list the same members can then never hold in two clusters: two
        majorities of one list share a member.  (The cluster's own member
        list would not do: a stray member vouches for itself.)"""
        if len(self.members) == 1:
            return True  # the member the lock was taken through
        if self.config.expected_cluster_id:
            return self.cluster_id is not None
        return 2 * len(self._agreeing_members()) > len(self.members)

    def _agreeing_members(self):
        return set(member for member in self.agreeing.values() if member)

    def _unheard(self):
        """Members not heard from, or whose member id we do not know yet."""
        return [index for index, (endpoint, _) in enumerate(self.members)
                if not self.agreeing.get(endpoint.url)]

    def confirm_cluster(self, deadline):
        """Return once confirmed(), asking the members not heard from yet,
        each with a fair share of what is left (a first look of at most
        FIRST_LOOK each, so that one paused member does not eat the time of
        the others), again and again until the deadline.  EtcdLockError when
        a member answers with another cluster id, or when the deadline comes
        first.  When every member answers, this costs one request."""
        first = True
        while not self.confirmed():
            unheard = self._unheard()
            if not unheard or self.clock() >= deadline:
                raise self._unconfirmed()
            for tried, index in enumerate(unheard):
                share = _fair_share(deadline, self.clock(), len(unheard) - tried)
                if first:
                    share = min(share, self.FIRST_LOOK)
                self.ask_cluster(index, self.clock() + share)
                if self.confirmed():
                    return
            first = False
            # Refused at once, say: not a busy loop.
            self.watch.sleep(max(min(self.FIRST_LOOK / 5, deadline - self.clock()), 0))

    def _unconfirmed(self):
        heard = sorted(url for url, member in self.agreeing.items() if member)
        not_heard = ["%s (%s)" % (endpoint.url, self.not_heard.get(endpoint.url, "not asked"))
                     for index, (endpoint, _) in enumerate(self.members)
                     if not self.agreeing.get(endpoint.url)]
        return EtcdLockError(
            "cannot confirm that etcd at %s belongs to the cluster that %s means: %d of "
            "the %d members listed answered with cluster %s (%s%s), not heard: %s; more "
            "than half must, unless expected_cluster_id is set: list every member of the "
            "cluster, or set expected_cluster_id (ctdb_etcd_lock --check prints it)" % (
                self.endpoint, self.config.file, len(self._agreeing_members()),
                len(self.members), self.cluster_id[0] if self.cluster_id else "?",
                ", ".join(heard) or "none", "; some of them one member under two names"
                if len(self._agreeing_members()) < len(heard) else "",
                ", ".join(not_heard) or "none"))

    def ask_unheard(self, deadline):
        """While holding: ask the next member not heard from yet (round the
        list), if there is one and time before the deadline.  True if asked."""
        unheard = [index for index in self._unheard() if self.members[index][1] is not None]
        if not unheard or deadline - self.clock() < self.LEAST_ASK:
            return False
        index = min(unheard, key=lambda i: (i - self._next_ask) % len(self.members))
        self._next_ask = index + 1
        self.ask_cluster(index, deadline)
        return True

    def serves_v2(self, index, deadline):
        """Whether one member serves v2 now (None: no answer in time), asked
        on a connection of its own: the lock's stays as it is."""
        endpoint, addresses = self.members[index]
        if addresses is None:
            return None
        try:
            status, _, body = self._ask_alone(index, "GET", self.config.version_prefix
                                              + "/keys/", {}, None, deadline)
        except (_NoTime, _Closed, ValueError, OSError):
            return None
        return not _serves_no_v2(Response(status, {}, body, endpoint.url))

    def _ask_alone(self, index, method, path, headers, body, deadline):
        """(status, headers, body) of one request to one member on a
        connection of its own, closed after: the lock's stays as it is."""
        endpoint, addresses = self.members[index]
        conn = Connection(endpoint, addresses, deadline, self.clock, self.watch,
                          self._tls_context() if endpoint.scheme == "https" else None)
        try:
            status, answer_headers, data, _ = conn.exchange(Connection.encode(
                method, endpoint.netloc, path, headers, body), deadline)
        finally:
            conn.close()
        return status, answer_headers, data

    def _own_read(self):
        """The body of a range that a member answers from its own store (a
        count of the lock's key): its header names its cluster and itself,
        where maintenance status is kept from us."""
        import json
        return json.dumps({"key": _b64(self.config.lock_key), "serializable": True,
                           "count_only": True}).encode()

    def ask_cluster(self, index, deadline):
        """Ask one member which cluster it belongs to (v3 maintenance/status,
        with the lock's token if it has one), on a connection of its own:
        the lock's stays as it is.  The answer goes through check_cluster,
        so that a member of another cluster raises.  False if none came in
        time."""
        import json
        endpoint, addresses = self.members[index]
        if addresses is None:
            self.not_heard[endpoint.url] = "its name did not resolve"
            return False
        why = "no answer"
        headers = {"Content-Type": "application/json"}
        asks = [(prefix, "/maintenance/status", b"{}") for prefix in ("/v3", "/v3beta")]
        while asks:  # /v3: etcd 3.4 and later; /v3beta: etcd 3.3
            prefix, path, body = asks.pop(0)
            if self.token:
                headers["Authorization"] = self.token
            try:
                status, answer_headers, data = self._ask_alone(
                    index, "POST", prefix + path, headers, body, deadline)
            except _NoTime:
                why = "no answer in time"
                break
            except (_Closed, ValueError, OSError) as e:
                why = getattr(e, "strerror", None) or str(e) or "connection closed"
                break
            cluster_id, member_id = answer_headers.get("x-etcd-cluster-id"), None
            if status == 200:
                try:
                    header = json.loads(data.decode())["header"]
                    cluster_id, member_id = _hex(header["cluster_id"]), \
                        _int(header["member_id"])
                except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
                    pass
            if cluster_id and cluster_id != "0" and member_id:
                self.check_cluster(cluster_id, endpoint.url, member_id)
                return True
            why = "HTTP %d without a cluster and member id" % status
            if status == 401 and b"invalid auth token" in data:
                why += " (it refused our token: a member of another cluster?)"
            if status == 400 and self.token and self.reauthenticate and \
                    not self.renewed and b"auth store is old" in data:
                # Our token is older than a change to users or roles (JWT):
                # once more with a new one, once for the cluster check.
                self.renewed = True
                try:
                    self.reauthenticate(deadline)
                except EtcdLockError as e:
                    why = "a new token: %s" % e
                    break
                asks.insert(0, (prefix, path, body))
                continue
            if status != 404 and self.token and path != "/kv/range":
                # etcd 3.6.0-3.6.11 keep maintenance status to root: a read
                # of the lock's key (from the member itself) names both ids.
                asks = [(prefix, "/kv/range", self._own_read())]
            elif status != 404:
                break
        if why != "no answer in time" or endpoint.url not in self.not_heard:
            self.not_heard[endpoint.url] = why  # a reason it gave outlives a later silence
        self.log.debug("no cluster id from %s: %s" % (endpoint.url, why))
        return False

    def request(self, method, path, deadline, form=None, body=None, headers=None,
                behind=False, secret=False, api=None):
        """One request, sent again (on a new connection, to another member)
        when its answer is lost: every request of ours is safe to repeat.
        ``behind``: first queue it behind every request still in flight.
        ``secret``: the body (and the answer) are never logged.
        ``api`` "v2": only to members that serve v2.  While --enable-v2 is
        being changed, members differ, and one v2 keyspace is behind them
        all: a member without v2 sends it to the next, and the answer that
        v2 is not served comes back only when no member that answered
        serves it."""
        started = self.clock()
        deadline = min(deadline, started + self.config.read_timeout)
        headers = dict(headers or {})
        if form is not None:
            from urllib.parse import urlencode
            body = urlencode(form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            headers["Content-Type"] = "application/json"
        self.log.trace("  body %s" % ("(not shown)" if secret else repr(body)))
        if behind:
            queued = sum(conn.send_now(Connection.encode(
                method, conn.endpoint.netloc, path, headers, body))
                for conn in self._in_flight)
            if queued:
                self.log.debug("  also queued behind %d request(s) in flight" % queued)
        members = self._members(deadline)
        order = [(self.current + attempt) % len(members) for attempt in range(len(members))]
        if api == "v2":
            order = [index for index in order if index not in self.without_v2]
            if not order:
                return next(iter(self.without_v2.values()))
        failures, refusal, served = [], None, None
        for attempt, index in enumerate(order):
            left = deadline - self.clock()
            if left <= 0 and failures:
                break
            share = _fair_share(deadline, deadline - left, len(order) - attempt)
            if attempt == 0:  # the member that answered last: a fair chance
                share = max(share, min(left / 2, 0.5))
            until = self.clock() + share
            try:
                response = self._ask(index, method, path, headers, body, until, secret)
            except _MemberFailed as e:
                failures.append(str(e))
                self.unanswered += e.sent
                continue
            if api == "v2" and _serves_no_v2(response):
                self.without_v2[index] = refusal = response
                failures.append("%s does not serve v2" % response.endpoint)
                continue
            if (response.status >= 500 or response.status in (408, 429)) \
                    and attempt + 1 < len(order):
                # No leader, not ready, overloaded: another member may do.
                # (What it was asked may still be done, as after a timeout.)
                failures.append("%s answered HTTP %d" % (response.endpoint, response.status))
                self.unanswered += 1
                if api == "v2" and b"errorCode" in response.body:
                    served = response  # a v2 error of its own: it serves v2
                continue
            self.current = index
            return response
        if served is not None:
            return served  # v2 is served, only not now: never "not served"
        if refusal is not None:
            # Those that answered serve no v2; one that did not may (a
            # member down): we cannot know better.  (An auto holder keeps
            # asking while it holds: Transport.serves_v2.)
            return refusal
        if len(failures) == 1:
            raise TransportError(failures[0])
        raise TransportError("no etcd member answered in %.1fs: %s" % (
            self.clock() - started, "; ".join(failures)))

    def answers_in_flight(self, deadline):
        """The answers still due to requests whose wait was cut short (by a
        signal, a deadline), as far as they come by the deadline."""
        answers = []
        for conn in self._in_flight:
            if conn.sent:
                try:
                    status, headers, body, _ = conn.answer(deadline)
                except (_NoTime, _Closed, ValueError, OSError):
                    continue
                answers.append(Response(status, headers, body, conn.endpoint.url))
        return answers

    def endpoints(self, deadline):
        """The members (found by DNS SRV, where so configured)."""
        return [endpoint for endpoint, _ in self._members(deadline)]

    def about_member(self, index, deadline, v2_headers, about):
        """What one member says of itself, for --check, filled into
        ``about``: its version, whether it serves v3 (and its cluster id)
        and v2.  TransportError or EtcdError if it does not answer."""
        what = "the answer of %s" % self.members[index][0].url
        version = self.ask(index, "GET", "/version", deadline).json()
        about["version"] = _field(version, "etcdserver", str, what, None)
        token = {"Authorization": self.token} if self.token else None
        response = self.ask(index, "POST", "/v3/maintenance/status", deadline, body=b"{}",
                            headers=token)
        # Refused is served: with auth on, etcd 3.5.28+ tells it only to a
        # user with a token, 3.6.0-3.6.11 only to root.
        about["v3"] = response.status in (200, 400, 401, 403)
        if response.status != 200 and about["v3"]:
            about["status_refused"] = str(_field(response.json(), "message", str, what, "?"))
            if token:  # a read of the lock's key (the member's own) names the cluster
                response = self.ask(index, "POST", "/v3/kv/range", deadline, headers=token,
                                    body=self._own_read())
        if response.status == 200:
            header = _field(response.json(), "header", dict, what, {})
            about["cluster_id"] = _hex(_field(header, "cluster_id", "int64", what, 0))
        response = self.ask(index, "GET", self.config.version_prefix + "/keys/", deadline,
                            headers=v2_headers)
        about["v2"] = not _serves_no_v2(response)
        return about

    def ask(self, index, method, path, deadline, body=None, headers=None):
        """One member's answer (for --check), or TransportError."""
        headers = dict(headers or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            return self._ask(index, method, path, headers, body, deadline, False)
        except _MemberFailed as e:
            raise TransportError(str(e)) from None

    def _ask(self, index, method, path, headers, body, deadline, secret):
        """One member's answer, or _MemberFailed."""
        endpoint = self.members[index][0]
        self.log.debug("%s %s%s" % (method, endpoint.url, path))
        request = Connection.encode(method, endpoint.netloc, path, headers, body)
        started = self.clock()
        try:
            try:
                answer = self._exchange(index, request, deadline)
            except _Closed:
                # etcd may have closed the kept-alive connection while we
                # slept; ask once more on a new one.
                self._drop(in_flight=False)
                answer = self._exchange(index, request, deadline)
        except _NoTime:
            sent = self._conn is not None and self._conn.sent
            self._drop()
            if self.clock() - started < 0.01:
                raise _MemberFailed("no time was left to ask %s" % endpoint.url) from None
            raise _MemberFailed("%s did not answer within %.1fs" % (
                endpoint.url, self.clock() - started), sent) from None
        except _Closed:
            self._drop(in_flight=False)
            raise _MemberFailed("%s closed the connection without an answer"
                                % endpoint.url, sent=True) from None
        except (ValueError, OSError) as e:
            sent = self._conn is not None and self._conn.sent
            head = self._conn.head if self._conn is not None else b""
            self._drop()
            tls = _tls_failure(e, endpoint, self.config) if endpoint.scheme == "https" \
                else None
            if tls:
                raise _MemberFailed(tls, sent) from None
            if b"HTTPS server" in head or head[:1] == b"\x15":  # a TLS alert
                raise _MemberFailed("%s speaks TLS; use https:// there (protocol = https)"
                                    % endpoint.url) from None
            if endpoint.scheme == "http" and not head and sent:
                # etcd's TLS port closes on plain HTTP without a word.
                raise _MemberFailed("%s closed the connection without a word; if it speaks "
                                    "TLS, use https:// there (protocol = https)"
                                    % endpoint.url, sent) from None
            if isinstance(e, ValueError):
                raise _MemberFailed("%s answered in a way etcd would not: %s" % (
                    endpoint.url, e), sent) from None
            raise _MemberFailed("cannot talk to etcd at %s: %s; check that etcd runs "
                                "there, and the members in %s" % (
                                    endpoint.url, e.strerror or e,
                                    self.config.file), sent) from None
        except BaseException:
            # Interrupted (SIGTERM, parent gone) mid-request.
            self._drop()
            raise
        status, answer_headers, data, keep_alive = answer
        if not keep_alive:
            self._drop()
        self.log.trace("  HTTP %d %s" % (status, "(not shown)" if secret else repr(data[:500])))
        if endpoint.scheme == "http" and status == 400 and b"HTTPS server" in data:
            self._drop(in_flight=False)
            raise _MemberFailed("%s speaks TLS; use https:// there (protocol = https)"
                                % endpoint.url)
        return Response(status, answer_headers, data, endpoint.url)

    def _exchange(self, index, request, deadline):
        if self._conn is not None and self._conn.endpoint is not self.members[index][0]:
            self._drop(in_flight=False)  # answered: nothing of ours in flight there
        if self._conn is None:
            endpoint, addresses = self.members[index]
            if addresses is None:
                raise OSError(0, "cannot resolve %s" % endpoint.host)
            tls = self._tls_context() if endpoint.scheme == "https" else None
            self._conn = Connection(endpoint, addresses, deadline, self.clock,
                                    self.watch, tls)
        return self._conn.exchange(request, deadline)

    def _members(self, deadline):
        """The members with their addresses, resolved on first use."""
        if self.members is None:
            endpoints = self.config.endpoints
            if endpoints is None:
                endpoints = srv_members(self.config, self.watch, deadline)
            members, failures = [], []
            for tried, endpoint in enumerate(endpoints):
                now = self.clock()
                until = now + _fair_share(deadline, now, len(endpoints) - tried)
                try:
                    addresses = _addresses(endpoint, self.watch, until)
                except (OSError, UnicodeError) as e:
                    failures.append("cannot resolve etcd host %s: %s" % (
                        _shown(endpoint.host), getattr(e, "strerror", None) or e))
                    addresses = None
                members.append([endpoint, addresses])
            if all(addresses is None for _, addresses in members):
                raise TransportError("%s; check the members in %s" % (
                    "; ".join(failures), self.config.file))
            for failure in failures:
                self.log.error("%s; going on without it" % failure)
            self.members = members
        return self.members

    def _tls_context(self):
        """TLS settings, built once: ssl is imported only for https."""
        if self._tls is None:
            import ssl
            config = self.config
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and name
            try:
                if config.ca_cert:
                    context.load_verify_locations(cafile=config.ca_cert)
                else:
                    context.load_default_certs()
            except (OSError, ssl.SSLError) as e:
                raise ConfigError("%s: cannot use ca_cert %s: %s" % (
                    config.where("ca_cert"), config.ca_cert,
                    getattr(e, "strerror", None) or e)) from None
            if config.cert:
                cert, key = config.cert
                try:
                    context.load_cert_chain(cert, key or config.key)
                except (OSError, ssl.SSLError) as e:
                    raise ConfigError("%s: cannot use cert %s (key %s): %s" % (
                        config.where("cert"), cert, key or config.key or "in the same file",
                        getattr(e, "strerror", None) or e)) from None
            self._tls = context
        return self._tls


# ---------------------------------------------------------------------------
# The locks.  V2Lock and V3Lock speak the interface of Lock, and so does
# LockSet, which holds several as one.
#
# Every answer is checked where it is parsed, into the small records below
# (a v2 node, a v3 key-value, a lease): a field etcd would give otherwise
# is a TransportError naming it, retried like a member that did not answer.
# Anything else that goes wrong in here is a bug of ours, and reported as
# one: the lock is given back at once.

class Occupant:
    """Who holds a lock, as etcd shows it.

    ``value`` names the holder (host, pnn, pid); ``left`` the whole seconds
    until its TTL runs out as etcd counts them (None: it has no TTL);
    ``granted`` the TTL it was given (None: etcd does not say, as in v2);
    ``since`` the etcd revision (v3) or index (v2) that created it;
    ``ident`` changes when another takes the lock; ``rounding`` is how much
    more than ``left`` may really be left (v3 rounds down, v2 up);
    ``expires`` is etcd's wall-clock time of expiry, where it says (v2).
    """

    __slots__ = ("value", "left", "granted", "since", "ident", "rounding", "expires")

    def __init__(self, value, left=None, granted=None, since=None, ident=None, rounding=0,
                 expires=None):
        self.value = value
        self.left = left
        self.granted = granted
        self.since = since
        self.ident = ident
        self.rounding = rounding
        self.expires = expires


class Lock:
    """What every lock does.  Deadlines and the times returned are clock()
    values.

    valid_until, returned by acquire() and refresh(), is the time before
    which the lock cannot expire on etcd: the send time of the request that
    set its TTL, plus the TTL.  A request we gave up on may still be applied
    later, in any order, so that request must be one that no request of
    ours sent earlier can overtake: each lock says which send it counts
    from.

    Errors: LockContended (someone else holds it), LockLost (it was ours
    and is not any more), ApiNotServed, AuthError, EtcdError (etcd said no:
    a 4xx status is about the lock itself and final, others may pass),
    TransportError (no member answered as etcd would).
    """

    api = None  # "v2", "v3", or both joined by "+"
    required = True  # False: skipped where etcd does not serve its api (auto)

    def acquire(self, deadline):
        """Take the lock: valid_until.  On contention, give back what this
        try queued or took, then raise LockContended (as etcd's TryLock
        does).  Any other error may leave something of ours behind:
        release() finds it."""
        raise NotImplementedError

    def refresh(self, deadline):
        """Extend the lock: the new valid_until.  LockLost when etcd says it
        is not ours any more; TransportError, EtcdError or AuthError when
        it could not be proved either way (the holder tries again until its
        fence)."""
        raise NotImplementedError

    def release(self, deadline):
        """Give back whatever may be ours, also after an acquire() that
        failed halfway; safe to call at any time, and again.  An error
        means etcd could not be asked: what is ours expires by its TTL."""
        raise NotImplementedError

    def holding(self, deadline):
        """Who holds the lock now: an Occupant, or None.  Changes nothing."""
        raise NotImplementedError

    def next_round(self, value):
        """Take a new value for a new try after a handover wait (release()
        came first): nothing sent for an earlier try can pass for this
        one's, or be timed from this one's sends."""
        raise NotImplementedError

    def forget(self):
        """Give up giving back what is ours: it expires by its TTL."""
        raise NotImplementedError

    GIVE_BACK = 1.0  # seconds: what a contender took goes back, then ctdbd hears '1'

    def _contended(self, occupant, deadline):
        """LockContended, once what this try took is given back: within
        GIVE_BACK seconds, or forgotten (to expire by its TTL), so that
        nothing after spends time on it again."""
        until = min(deadline, self.transport.clock() + self.GIVE_BACK)
        try:
            self.release(until)
        except EtcdLockError as e:
            self.log.info("could not give back what this try took: %s; it expires by its "
                          "TTL" % e)
            self.forget()
        return LockContended(occupant, self, until)

    def look_around(self, deadline):
        """Between refreshes, with time before the deadline: ask what could
        end the hold although the lock refreshes (a listed member not heard
        from may be of another cluster).  True if it asked something;
        raises what it found."""
        return self.transport.ask_unheard(deadline)


# -- Answers, checked where they are parsed

_REQUIRED = object()


def _field(record, name, kind, what, default=_REQUIRED):
    """record[name] as ``kind``: str, int, bool, list, dict, or "int64" (a
    v3 number, which the gateway gives as a decimal string).  Missing:
    ``default`` where one is given (etcd leaves out zero values).  Else a
    TransportError naming ``what`` and the field."""
    if not isinstance(record, dict):
        raise TransportError("%s is no JSON object: %s" % (what, _cut(repr(record), 80)))
    if name not in record and default is not _REQUIRED:
        return default
    value = record.get(name)
    if kind == "int64":
        digits = value[1:] if isinstance(value, str) and value[:1] == "-" else value
        if isinstance(digits, str) and 0 < len(digits) <= 20 \
                and not digits.strip("0123456789"):  # ASCII digits only: int() takes more
            return int(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise TransportError("%s has %s %s where etcd gives %s" % (
        what, name, _cut(repr(value), 60), _KINDS[kind]))


_KINDS = {"int64": "a number in a string", str: "a string", int: "a number",
          bool: "true or false", list: "a list", dict: "an object"}


class V2Node:
    """A node of a v2 answer: a lock's directory, or an entry in it."""

    __slots__ = ("key", "value", "dir", "ttl", "expiration", "created", "modified", "nodes",
                 "what")

    def __init__(self, raw, what, child=False):
        self.key = _field(raw, "key", str, what)
        self.dir = _field(raw, "dir", bool, what, False)
        self.value = _field(raw, "value", str, what, None)
        self.ttl = _field(raw, "ttl", int, what, 0)  # left out once 0 (expired)
        self.expiration = _field(raw, "expiration", str, what, None)
        self.created = _field(raw, "createdIndex", int, what, None)
        self.modified = _field(raw, "modifiedIndex", int, what, None)
        # One level: we never ask for more (a directory's own entries).
        self.nodes = [] if child else [V2Node(node, what, True)
                                       for node in _field(raw, "nodes", list, what, [])]
        self.what = what

    def index(self):
        """The modifiedIndex of an entry we refresh: etcd always gives it."""
        if not self.modified or self.modified <= 0:
            raise TransportError("%s has no modifiedIndex for %s" % (self.what,
                                                                      _cut(self.key, 80)))
        return self.modified

    def occupant(self):
        return Occupant(self.value, self.ttl if self.expiration else None, since=self.created,
                        ident=self.key, expires=self.expiration)


class V3Kv:
    """A key-value of a v3 answer: its value (as text), create revision and
    lease (0: none)."""

    __slots__ = ("raw_value", "value", "created", "lease")

    def __init__(self, raw, what):
        self.raw_value = _field(raw, "value", str, what, "")
        self.value = _b64_text(self.raw_value)
        self.created = _field(raw, "create_revision", "int64", what)
        self.lease = _field(raw, "lease", "int64", what, 0)


def _kvs(data, what):
    """The key-values of a range answer."""
    return [V3Kv(kv, what) for kv in _field(data, "kvs", list, what, [])]


def _txn_range(data, what):
    """The key-values of the range inside a transaction's answer."""
    kvs = []
    for answer in _field(data, "responses", list, what, []):
        found = _field(answer, "response_range", dict, what, None)
        if found is not None:
            kvs += _kvs(found, what)
    return kvs


def _b64_text(text):
    """A value as etcd's gateway gives it (base64), as text; never raises:
    it names holders in messages."""
    import base64
    try:
        return base64.b64decode(text).decode("utf-8", "replace")
    except (TypeError, ValueError):
        return "(not base64: %r)" % _cut(str(text), 40)


def _b64(text):
    import base64
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _int(text):
    """A number from an answer that only names things (--status), or 0."""
    try:
        return int(text)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        return 0


def _hex(cluster_id):
    """A cluster id as etcd's v2 header and python-etcd write it."""
    return format(_int(cluster_id), "x")


def _quote(path):
    from urllib.parse import quote
    return quote(path, safe="/")


def _serves_no_v2(response):
    """etcd's answer where it serves no v2: a plain 404, not a v2 error."""
    return response.status == 404 and b"errorCode" not in response.body


def _final(error):
    """An etcd error about the lock itself (4xx), not one that may pass
    (5xx, 408 timeout, 429 too many requests, a token older than a change to
    users or roles)."""
    return error.status is not None and error.status < 500 and \
        error.status not in (408, 429) and "auth store is old" not in error.detail


class V2Lock(Lock):
    """The lock in etcd's v2 keys API, by the original helper's recipe: an
    in-order entry in the lock's directory; the entry first by name holds.

    Which send its validity counts from:

    * acquire(): the first send of this try's POST.  Every entry holding
      this try's value was queued by one of its sends (each try has a value
      of its own), so none began its TTL earlier.
    * refresh(): the first send of a refresh that carried the entry's
      modifiedIndex as we last saw it.  etcd fixes a v2 expiry on the
      member that *receives* the request (its clock, plus ttl), and the
      leader applies it when it gets there: a follower whose link to the
      leader is slow hands it on seconds later, after a refresh we sent
      since.  etcd bounds neither for us: its request timeout (5 s plus two
      election timeouts, etcdserver's ReqTimeout) ends the wait for the
      answer, not the proposal, and a message still on its way over a peer
      connection (rafthttp's 5 s read and write timeouts) or already in the
      leader's log is applied all the same.  So each refresh compares our
      value *and* that index, which every refresh moves on: of the requests
      carrying one index, one at most is applied, and none after a later
      one.  Validity never counts from a send that a request sent earlier
      could still overtake.
    """

    api = "v2"

    def __init__(self, transport, config, value, log, required=True):
        self.transport = transport
        self.config = config
        self.ttl = config.lock_ttl
        self.value = value
        self.log = log
        self.required = required
        self.path = config.lock_key
        self.url = config.version_prefix + "/keys" + _quote(config.lock_key)
        self.entry = None  # the key of our entry, once etcd named it
        self.posted = False  # an entry may be ours even before etcd named it
        self.resent = False  # a POST was sent more than once: more entries may be ours
        self.index = None  # our entry's modifiedIndex, as last seen
        self.index_sent = None  # the first send of a refresh that carried it
        self.former = []  # our values of earlier tries: entries of theirs are ours to remove
        self.posted_at = 0  # transport.unanswered when this try's POST went out
        self.late = False  # a send of a POST went unanswered: it may yet queue an entry
        self.headers = {}
        if config.username:  # v2 authenticates every request
            import base64
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                ("%s:%s" % (config.username, config.password)).encode("utf-8")).decode()

    # -- requests and answers

    def _node(self, response):
        """The node of a v2 answer; ApiNotServed when v2 is switched off,
        AuthError or EtcdError for etcd's errors."""
        if _serves_no_v2(response):
            raise ApiNotServed("%s does not serve the v2 API at %s (etcd 3.6, or 3.4/3.5 "
                               "without --enable-v2); set api = v3 (or auto), or fix "
                               "version_prefix" % (response.endpoint,
                                                   self.config.version_prefix))
        data = response.json()
        self.transport.check_cluster(response.headers.get("x-etcd-cluster-id"),
                                     response.endpoint)
        if "errorCode" in data:
            what = "v2 error from %s" % response.endpoint
            code = _field(data, "errorCode", int, what)
            message = _field(data, "message", str, what, "")
            cause = _field(data, "cause", str, what, "")
            if code == 110:
                raise AuthError("etcd's v2 API at %s refused us: %s; check username and "
                                "password in %s" % (response.endpoint, message,
                                                    self.config.file))
            raise EtcdError("etcd at %s: %s (v2 error %s, %s)" % (
                response.endpoint, message, code, cause), response.status, code, cause)
        if "node" not in data:
            raise TransportError("%s answered HTTP %d without a node: %r" % (
                response.endpoint, response.status, response.body[:60]))
        return V2Node(data["node"], "the v2 node %s answered" % response.endpoint)

    def _request(self, method, url, deadline, form=None, behind=False):
        """(send time, node) of one request."""
        sent = self.transport.clock()
        response = self.transport.request(method, url, deadline, form=form,
                                          headers=self.headers, behind=behind, api="v2")
        return sent, self._node(response)

    def _entry_url(self, key=None):
        return self.url + "/" + _quote((key or self.entry).rsplit("/", 1)[-1])

    def entries(self, deadline):
        """The queue: the entries of the lock's directory, first by name
        first (python-etcd's order); the first holds the lock."""
        try:
            _, node = self._request("GET", self.url + "?quorum=true", deadline)
        except EtcdError as e:
            if e.code == 100:  # the directory is gone: nobody is queued
                return []
            raise
        if not node.dir:
            raise EtcdLockError(
                "etcd has a plain key at %s (value %r) where the lock's directory belongs; "
                "no helper writes one there, so remove it" % (self.path, node.value))
        return sorted((entry for entry in node.nodes if not entry.dir),
                      key=lambda entry: entry.key)

    def holding(self, deadline):
        entries = self.entries(deadline)
        return entries[0].occupant() if entries else None

    def queue(self, deadline):
        """Every entry as an Occupant, the holder first (for --status)."""
        return [entry.occupant() for entry in self.entries(deadline)]

    # -- the lock

    def acquire(self, deadline):
        # 1. Queue our entry.  Whose answer is lost may be sent again (to
        #    another member): every entry with our value is ours, and the
        #    first of them is the one that counts.
        self.posted = True  # from here on, an entry of ours may stand there
        unanswered = self.posted_at = self.transport.unanswered
        try:
            sent, node = self._request("POST", self.url, deadline,
                                       {"value": self.value, "ttl": self.ttl})
        except ApiNotServed:
            # The members that answered serve no v2; one that took the POST
            # and whose answer was lost may serve it, and queued our entry.
            self.posted = self.transport.unanswered > unanswered
            raise
        except EtcdError as e:
            if e.code == 104:  # not a directory: no helper writes such a key
                raise EtcdLockError("etcd has a plain key at %s where the lock's directory "
                                    "belongs; no helper writes one there, so remove it "
                                    "(or fix locks_dir)" % e.cause) from None
            raise
        if node.value != self.value or not node.key.startswith(self.path + "/"):
            raise TransportError("%s answered our write with another entry: %s" % (
                self.transport.endpoint, _cut(node.key, 80)))
        self.entry = node.key
        self.resent = self.transport.unanswered > unanswered
        # 2. Ours holds if it is first.
        entries = self._without_former(self.entries(deadline), deadline)
        ours = [entry for entry in entries if entry.value == self.value]
        if ours and ours[0].key != self.entry:
            # An earlier send of this POST got through: that entry counts.
            self.entry, self.resent = ours[0].key, True
        first = entries[0] if entries else None
        if first is None or first.key != self.entry:
            if first is not None and not first.expiration:
                self.log.error("v2 entry %s has no TTL and blocks lock %s for ever; "
                               "delete it" % (first.key, self.path))
            occupant = first.occupant() if first else Occupant("(nobody: our entry expired)")
            # Ours goes back before anyone says '1' (the original left its
            # entry behind, blocking everyone for a TTL).
            raise self._contended(occupant, deadline)
        for entry in ours[1:]:  # sent twice: the others stand behind, in everyone's way
            self._delete(entry.key, deadline)
        self.index, self.index_sent = first.index(), None
        # From the first send of this try's POST, which queued every entry
        # with its value.
        return sent + self.ttl

    def forget(self):
        self.entry, self.posted, self.resent = None, False, False

    def _without_former(self, entries, deadline):
        """The queue less the entries of our earlier tries, removed: a POST
        of one we gave up on, applied late, is nobody's lock."""
        stale = [entry for entry in entries if entry.value in self.former]
        gone = [entry for entry in stale
                if self._delete(entry.key, deadline, value=entry.value)]
        return [entry for entry in entries if entry not in gone]

    def refresh(self, deadline):
        if self.index_sent is None:
            self.index_sent = self.transport.clock()
        try:
            try:
                sent, node = self._request("PUT", self._entry_url(), deadline, {
                    "refresh": "true", "prevValue": self.value, "prevIndex": self.index,
                    "ttl": self.ttl})
                # This one moved the entry on from the index: no request of
                # ours sent earlier can be applied after it.
                valid_from = sent
            except EtcdError as e:
                if e.code != 101:
                    raise
                node = self._moved_on(deadline)
                # A refresh of ours with this index, one we gave up on, was
                # applied: sent no earlier than the first that carried it.
                valid_from = self.index_sent
            if node.value != self.value:
                raise LockLost("v2 entry %s answered a refresh with another value" % self.entry)
            self.index, self.index_sent = node.index(), None
            entries = self.entries(deadline)
        except EtcdError as e:
            if e.code == 100:
                raise LockLost("v2 entry %s is gone (expired or deleted)" % self.entry) from None
            if _final(e):
                raise LockLost("refresh of v2 entry %s refused: %s" % (self.entry, e)) from None
            raise
        except ApiNotServed as e:
            # Members that served v2 went, or stopped serving it: as for any
            # member failure, try again until the fence.
            raise TransportError(str(e)) from None
        if not entries or entries[0].key != self.entry:
            # python-etcd re-creates an expired entry under its old name.
            raise LockLost("v2 entry %s is no longer first: %s holds the lock" % (
                self.entry, entries[0].value if entries else "nobody"))
        return valid_from + self.ttl

    def _moved_on(self, deadline):
        """Our entry after a refresh's compare failed: moved on by a refresh
        of ours applied late, or lost (LockLost)."""
        _, node = self._request("GET", self._entry_url() + "?quorum=true", deadline)
        if node.value != self.value:
            raise LockLost("v2 entry %s no longer holds our value" % self.entry)
        if node.index() == self.index:
            raise TransportError("%s refused a refresh whose compare holds (entry %s)" % (
                self.transport.endpoint, self.entry))
        return node

    def release(self, deadline):
        keys = [self.entry] if self.entry is not None else []
        if self.entry is None and self.posted:
            # Our POST went out and we stopped waiting for its answer (a
            # signal came): the answers of its sends name our entries --
            # each send may have queued one.  Looking for them instead could
            # come before the POST is applied.
            clock = self.transport.clock
            for response in self.transport.answers_in_flight(clock() + (deadline - clock()) / 2):
                try:
                    node = self._node(response)
                except EtcdLockError:
                    continue
                if node.value == self.value and node.key not in keys:
                    keys.append(node.key)
        for key in keys:
            # Behind any refresh still in flight, which would extend the entry.
            self._delete(key, deadline, behind=True)
        if self.posted:
            self.late = self.late or self.transport.unanswered > self.posted_at
        if (self.posted and (self.entry is None or self.resent)) or self.late:
            # A send of a POST of ours whose answer did not come back may
            # have queued an entry all the same, now or since we last
            # looked (the last look is at our exit): find them by value.
            try:
                entries = self.entries(deadline)
            except ApiNotServed:  # nobody that answered serves v2: none of ours
                entries = []
            mine = [self.value] + self.former
            for entry in entries:
                if entry.value in mine and entry.key not in keys:
                    self._delete(entry.key, deadline, value=entry.value)
        self.entry, self.posted = None, False

    def _delete(self, key, deadline, behind=False, value=None):
        """Compare-and-delete one entry of ours (with our value, or the
        value of an earlier try); whether it is gone."""
        from urllib.parse import urlencode
        try:
            self._request("DELETE", self._entry_url(key) + "?" + urlencode(
                {"prevValue": value or self.value}), deadline, behind=behind)
            self.log.info("gave back our v2 entry %s" % key)
        except EtcdError as e:
            if e.code == 100:  # expired, or given back by a delete queued behind
                self.log.info("our v2 entry %s is gone already" % key)
            elif e.code == 101:
                self.log.info("v2 entry %s holds another value now; left it alone" % key)
                return False
            else:
                raise
        return True

    def next_round(self, value):
        self.former.append(self.value)
        self.value = value
        self.entry, self.posted, self.resent, self.index, self.index_sent = (
            None, False, False, None, None)


class V3Lock(Lock):
    """The lock as a key on a lease, through etcd's v3 JSON gateway.

    Which send its validity counts from: the lease's grant (acquire) or the
    keepalive that renewed it (refresh).  The leader sets a lease's expiry
    when it grants or renews it, after that send, and a late keepalive
    only renews; the key lives as long as the lease.  Our own put, answered
    on a connection that broke, is adopted only on this try's lease.
    """

    api = "v3"
    PREFIXES = ("/v3", "/v3beta")  # etcd 3.4+, etcd 3.3
    OLD_TOKEN_TRIES = 3  # new tokens for one request, each older than a change to users

    def __init__(self, transport, config, value, log, required=True):
        self.transport = transport
        self.config = config
        self.ttl = config.lock_ttl
        self.value = value
        self.log = log
        self.required = required
        self.path = config.lock_key
        self.key = _b64(config.lock_key)
        self.prefix = None  # the gateway's, once known
        self.lease = None  # our lease's ID
        self.revision = None  # create_revision of our key
        self.token = None  # v3 authentication: "" once we know none is needed

    # -- requests and answers

    def call(self, method, payload, deadline, behind=False):
        """POST to the gateway: (send time, JSON answer)."""
        import json
        if self.config.username and self.token is None:
            self._authenticate(deadline)
        renewed = old = 0
        while True:
            sent = self.transport.clock()
            try:
                response = self.transport.request(
                    "POST", self.prefix + method, deadline, body=json.dumps(payload).encode(),
                    headers={"Authorization": self.token} if self.token else None,
                    behind=behind)
            except TransportError:
                if not self.token or renewed:
                    raise
                # Some servers answer a stale token by closing the
                # connection: once more with a new one.
                renewed += 1
                self._new_token(deadline)
                continue
            if response.status == 404 and method == "/lease/grant":
                raise ApiNotServed(response.endpoint)
            if self.token and response.status == 401 and not renewed:
                # Expired, or issued by another member (simple tokens are
                # each member's own): once more with a new one.
                renewed += 1
                self._new_token(deadline)
                continue
            if self.token and old < self.OLD_TOKEN_TRIES and \
                    b"auth store is old" in response.body:
                # Older than a change to users or roles (a JWT token carries
                # the auth revision it was issued at; the admin may be making
                # several): again with a new one.
                old += 1
                self._new_token(deadline)
                continue
            return sent, self._answer(response)

    def find_gateway(self, deadline):
        """Whether etcd has the gateway (/v3, or /v3beta on etcd 3.3), for
        the admin commands: a range of a key nobody writes."""
        for prefix in self.PREFIXES:
            response = self.transport.request("POST", prefix + "/kv/range", deadline,
                                              body=b'{"key": "AA=="}')
            if response.status != 404:
                self.prefix = prefix
                return True
        return False

    def _answer(self, response):
        data = response.json()
        if response.status != 200 or "error" in data:
            # 3.4/3.5 say {"error", "message", "code"}, 3.6 {"code", "message"};
            # a streamed answer (keepalive) says {"error": {...}}.
            error = data.get("error") if isinstance(data.get("error"), dict) else data
            code = error.get("code", error.get("grpc_code"))
            status = _int(error.get("http_code")) or response.status
            message = str(error.get("message") or error.get("error"))
            if _int(status) == 401 or "user name is empty" in message \
                    or "auth token" in message or "permission denied" in message:
                raise AuthError("etcd's v3 API at %s refused us: %s; check username and "
                                "password (and the user's role) in %s" % (
                                    response.endpoint, message, self.config.file),
                                detail=message)
            raise EtcdError("etcd at %s: %s (v3 code %s, HTTP %s)" % (
                response.endpoint, message, code, status), _int(status), code, detail=message)
        what = "the v3 answer of %s" % response.endpoint
        header = _field(data, "header", dict, what, None)
        if header is None:  # a keepalive's is in its result
            header = _field(_field(data, "result", dict, what, {}), "header", dict, what, {})
        if "cluster_id" in header:
            self.transport.check_cluster(
                _hex(_field(header, "cluster_id", "int64", what)), response.endpoint,
                _field(header, "member_id", "int64", what, 0))
        return data

    def _new_token(self, deadline):
        self.token = None
        self._authenticate(deadline)

    def _authenticate(self, deadline):
        """A token for username and password; none if etcd has auth off."""
        import json
        response = self.transport.request(
            "POST", self.prefix + "/auth/authenticate", deadline, secret=True,
            body=json.dumps({"name": self.config.username,
                             "password": self.config.password}).encode())
        if response.status == 404:
            raise ApiNotServed(response.endpoint)
        try:
            data = self._answer(response)
            self.token = _field(data, "token", str, "the token of %s" % response.endpoint, "")
            self.transport.token = self.token
            self.transport.reauthenticate = self._new_token
        except (AuthError, EtcdError) as e:
            if "authentication is not enabled" in e.detail:
                self.token = ""
                return
            if isinstance(e, EtcdError) and not _final(e):
                raise  # no leader, say: that may pass
            raise AuthError("v3 authentication as %s at %s failed: %s; check username "
                            "and password in %s" % (
                                _shown(self.config.username), response.endpoint, e.detail,
                                self.config.file)) from None

    def range(self, deadline):
        """The lock's key as a V3Kv, or None (a linearizable read)."""
        _, data = self.call("/kv/range", {"key": self.key}, deadline)
        kvs = _kvs(data, "the range answer of %s" % self.transport.endpoint)
        return kvs[0] if kvs else None

    def grant(self, ttl, deadline):
        """A new lease: (send time, ID, TTL granted)."""
        sent, data = self.call("/lease/grant", {"TTL": ttl}, deadline)
        what = "the lease %s granted" % self.transport.endpoint
        lease, granted = _field(data, "ID", "int64", what), _field(data, "TTL", "int64", what)
        if lease <= 0 or granted <= 0:
            raise TransportError("%s granted no usable lease (ID %d, TTL %d)" % (
                self.transport.endpoint, lease, granted))
        return sent, lease, granted

    def revoke(self, lease, deadline, behind=False):
        """Revoke a lease; one that expired already is no error."""
        try:
            self.call("/lease/revoke", {"ID": str(lease)}, deadline, behind=behind)
        except EtcdError as e:
            if e.status != 404:  # 404: the lease had expired already
                raise

    def may_write(self, deadline):
        """Whether these credentials may write the lock's key: a transaction
        whose comparison never holds, so that etcd checks the put's
        permission and changes nothing.  AuthError if not."""
        self.call("/kv/txn", {
            "compare": [{"target": "CREATE", "key": self.key, "result": "LESS",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": self.key, "value": ""}}]}, deadline)

    def holding(self, deadline):
        kv = self.range(deadline)
        return self._occupant(kv, deadline) if kv else None

    def _occupant(self, kv, deadline):
        """The holder of key-value kv, and what its lease has left.  Not
        knowing that is no error: only a contender's wait depends on it,
        and a '1' must not wait long for it."""
        left = granted = None
        if kv.lease:
            try:
                _, data = self.call("/lease/timetolive", {"ID": str(kv.lease)},
                                    min(deadline, self.transport.clock() + 1))
                what = "the lease %s gave time to live for" % self.transport.endpoint
                left = max(_field(data, "TTL", "int64", what, 0), 0)  # -1: expired already
                granted = _field(data, "grantedTTL", "int64", what, 0) or None
            except EtcdLockError as e:
                self.log.debug("no time to live for lease %s: %s" % (kv.lease, e))
        return Occupant(kv.value, left, granted, since=kv.created,
                        ident=(kv.created, kv.lease), rounding=1)

    # -- the lock

    def acquire(self, deadline):
        sent, self.lease, ttl = self._first_grant(deadline)
        # Put our key only if it was never created (create_revision 0);
        # otherwise read the holder, to name it.
        _, data = self.call("/kv/txn", {
            "compare": [{"target": "CREATE", "key": self.key, "create_revision": "0"}],
            "success": [{"request_put": {"key": self.key, "value": _b64(self.value),
                                         "lease": str(self.lease)}}],
            "failure": [{"request_range": {"key": self.key}}],
        }, deadline)
        what = "the transaction answer of %s" % self.transport.endpoint
        if _field(data, "succeeded", bool, what, False):
            self.revision = _field(_field(data, "header", dict, what), "revision", "int64",
                                   what)
        else:
            kvs = _txn_range(data, what)
            if not kvs:  # the key was created, and is not there?
                raise TransportError("%s answered a failed put without the key's holder" %
                                     self.transport.endpoint)
            if kvs[0].value != self.value or kvs[0].lease != self.lease:
                occupant = self._occupant(kvs[0], deadline)
                raise self._contended(occupant, deadline)  # our lease goes at once
            # Our own put, answered on a connection that broke: on this
            # try's lease, so timed from its grant all the same.
            self.revision = kvs[0].created
        if self.revision <= 0:
            raise TransportError("%s answered a put without a revision" %
                                 self.transport.endpoint)
        return sent + min(ttl, self.ttl)

    def _first_grant(self, deadline):
        """The lease of a try, which also finds the gateway: /v3, or
        /v3beta (etcd 3.3)."""
        for prefix in self.PREFIXES:
            self.prefix = prefix
            try:
                return self.grant(self.ttl, deadline)
            except ApiNotServed:
                pass
        raise ApiNotServed("%s does not serve the v3 API (no /v3 gateway: etcd older "
                           "than 3.3?); set api = v2" % self.transport.endpoint)

    def forget(self):
        self.lease = self.revision = None

    def refresh(self, deadline):
        try:
            sent, data = self.call("/lease/keepalive", {"ID": str(self.lease)}, deadline)
            what = "the keepalive answer of %s" % self.transport.endpoint
            ttl = _field(_field(data, "result", dict, what, {}), "TTL", "int64", what, 0)
            if ttl <= 0:
                # An expired or revoked lease still answers 200, only without a TTL.
                raise LockLost("lease %s of key %s expired or was revoked"
                               % (self.lease, self.path))
            # A keepalive proves the lease only; prove the key with a
            # linearizable read.
            kv = self.range(deadline)
        except EtcdError as e:
            if _final(e):
                raise LockLost("refresh of key %s refused: %s" % (self.path, e)) from None
            raise
        if kv is None:
            self.revision = None
            raise LockLost("key %s is gone (deleted)" % self.path)
        if kv.created != self.revision or kv.lease != self.lease or kv.value != self.value:
            self.revision = None  # not ours: release() must not touch it
            raise LockLost("key %s was replaced (now held by %s)" % (self.path, kv.value))
        return sent + min(ttl, self.ttl)

    def release(self, deadline):
        try:
            if self.revision is not None:
                revision, self.revision = self.revision, None
                # Ours only while it has our create revision *and* our value:
                # a plain put over the key keeps the first, not the second.
                _, data = self.call("/kv/txn", {
                    "compare": [{"target": "CREATE", "key": self.key,
                                 "create_revision": str(revision)},
                                {"target": "VALUE", "key": self.key,
                                 "value": _b64(self.value)}],
                    "success": [{"request_delete_range": {"key": self.key}}],
                }, deadline)
                if _field(data, "succeeded", bool, "the transaction answer of %s" %
                          self.transport.endpoint, False):
                    self.log.info("gave back v3 key %s" % self.path)
                else:
                    self.log.info("v3 key %s was no longer ours; left it alone" % self.path)
        finally:
            if self.lease is not None:
                lease, self.lease = self.lease, None
                # Behind any keepalive still in flight, which would renew it.
                self.revoke(lease, deadline, behind=True)

    def next_round(self, value):
        self.value = value  # release() has given back the lease and key


class LockSet(Lock):
    """Several locks held as one (api = auto): all of them, or none.

    A lock whose API the server does not serve is skipped unless required;
    a lock lost is the whole set lost; on contention what was taken is
    given back first.  Valid until the earliest of them.
    """

    def __init__(self, locks, log):
        self.candidates = locks
        self.transport = locks[0].transport
        self.held = []
        self.skipped = []  # their API not served: only a lost answer could have left ours
        self.log = log
        self.api = "+".join(lock.api for lock in locks)
        self._next_v2_ask = 0

    @property
    def value(self):
        return self.candidates[0].value

    def look_around(self, deadline):
        """Between refreshes: a member not heard from, else (where no member
        that answered served v2 when we took the lock, so that we hold
        none) whether a member serves v2 now, one after another: one that
        does could give a v2-only helper the lock there."""
        if self.transport.ask_unheard(deadline):
            return True
        skipped = [lock for lock in self.candidates if lock not in self.held
                   and lock.api == "v2"]
        members = self.transport.members or []
        if not skipped or not members or deadline - self.transport.clock() < 0.05:
            return False
        index = self._next_v2_ask % len(members)
        self._next_v2_ask += 1
        if self.transport.serves_v2(index, deadline):
            raise LockLost("etcd at %s serves v2 now, but the lock was taken without v2 "
                           "(no member that answered served it then): a v2-only helper "
                           "could take it there; giving it up" % members[index][0].url)
        return True

    def next_round(self, value):
        for lock in self.candidates:
            lock.next_round(value)

    def forget(self):
        for lock in self.candidates:
            lock.forget()

    def acquire(self, deadline):
        valid_until = []
        for lock in self.candidates:
            try:
                valid_until.append(lock.acquire(deadline))
            except ApiNotServed as e:
                if lock.required:
                    raise
                self.log.info("skipping the %s lock: %s" % (lock.api, e))
                self.skipped.append(lock)
                continue
            except LockContended as e:
                # What the others took goes back too, in what is left of the
                # contended lock's time for it.
                try:
                    self.release(e.until)
                except EtcdLockError as error:
                    self.log.info("could not give back what was taken: %s; it expires "
                                  "by its TTL" % error)
                    self.forget()
                raise
            self.held.append(lock)
        if not self.held:
            raise ApiNotServed("%s serves neither the v2 nor the v3 API; is it etcd?"
                               % self.transport.endpoint)
        self.api = "+".join(lock.api for lock in self.held)
        return min(valid_until)

    def refresh(self, deadline):
        return min(lock.refresh(deadline) for lock in self.held)

    def release(self, deadline):
        # Every candidate: one whose answer was lost may be ours all the
        # same.  What we hold goes back first, and a skipped lock's look for
        # what a lost answer may have left comes last, in what time is left:
        # it must not cost a held lock its give-back, nor pass for its failure.
        errors = []
        order = sorted(reversed(self.candidates), key=lambda lock: (
            lock not in self.held, lock in self.skipped))
        for lock in order:
            try:
                lock.release(deadline)
            except EtcdLockError as e:
                if lock in self.skipped:
                    self.log.info("could not look for an entry of the skipped %s lock: %s; "
                                  "any there expires by its TTL" % (lock.api, e))
                else:
                    errors.append(e)
        self.held, self.skipped = [], []
        if errors:
            raise errors[0]

    def holding(self, deadline):
        for lock in self.candidates:
            try:
                occupant = lock.holding(deadline)
            except ApiNotServed:
                continue
            if occupant is not None:
                return occupant
        return None


def make_lock(config, transport, value, log):
    if config.api == "v2":
        return V2Lock(transport, config, value, log)
    if config.api == "v3":
        return V3Lock(transport, config, value, log)
    # auto: v2 is optional unless its place was set by hand.
    return LockSet([V3Lock(transport, config, value, log, required=False),
                    V2Lock(transport, config, value, log,
                           required="version_prefix" in config.lines)], log)


# ---------------------------------------------------------------------------
# Taking the lock, and the handover from a holder that stopped refreshing.
#
# When a leader's node dies, every node runs its helper once per election,
# ctdbd's elections come 5 s apart, and a '1' ends a node's try.  Most tries
# land while the dead holder's lock still has a few seconds left; waiting
# those out, rather than saying '1', saves the cluster a whole round.

HANDOVER_POLL = 0.25  # seconds between looks at an expiring holder
CONFIRM_WAIT = 4.0  # seconds, at most, for a majority of the members (Transport.confirmed)
EXPIRY_LAG = 0.5  # etcd removes what expired within about this much


def take(lock, config, log, watch, handover_wait):
    """Acquire the lock: valid_until, or LockContended.

    A live holder refreshes every ``refresh`` seconds, so its lock never has
    much less than its TTL minus that left.  One with clearly less missed a
    refresh (it is dead, paused or cut off): if its lock runs out within
    handover_wait, wait for that and try again.  The acquisition stays a
    create-if-absent: a holder that refreshes after all keeps the lock.

    handover_wait is 0 for the check at the end of a recovery: it expects
    '1' within 5 s, and a '0' there fails the recovery.
    """
    clock = watch.clock
    give_up = None  # the end of the handover wait, from the first contention
    contended = None
    while True:
        # Taking the lock may not take longer than the lock would live.
        deadline = clock() + config.lock_ttl - config.fence_margin
        try:
            return lock.acquire(deadline)  # on contention, ours went back
        except LockContended as e:
            now = clock()
            if give_up is None:
                give_up = now + handover_wait
            if not _running_out(e.occupant, config, give_up - now):
                raise
            contended = e
        except EtcdLockError:
            if contended is None:
                raise
            raise contended from None  # after a wait, '1' as ever, never '3'
        _wait_for_expiry(contended, config, log, watch, give_up)
        lock.next_round(next_value(lock.value))


def _missed_refresh(occupant, config):
    """A live holder never has much less than its TTL minus refresh left."""
    granted = occupant.granted or config.lock_ttl  # v2: as ours, presumably
    return occupant.left is not None and occupant.left < granted - config.refresh - 1


def _running_out(occupant, config, budget):
    """Whether the occupant missed a refresh and its lock is gone within
    budget (etcd counts whole seconds, and removes what expired a little
    later)."""
    return _missed_refresh(occupant, config) and \
        occupant.left + occupant.rounding + EXPIRY_LAG <= budget


def _wait_for_expiry(contended, config, log, watch, give_up):
    """Return once the holder is gone (or another took the lock): time to
    try.  Raise ``contended`` when it refreshes, or at give_up."""
    clock = watch.clock
    occupant, lock, started = contended.occupant, contended.lock, clock()
    who = _printable(occupant.value)
    log.info("lock %s: holder %s missed its refresh and has %d s left; waiting up to "
             "%.1f s for it to expire" % (config.lock_key, who, occupant.left,
                                          give_up - started))
    while True:
        watch.sleep(min(HANDOVER_POLL, give_up - clock()))
        now = clock()
        if now >= give_up:
            log.info("lock %s: waited %.1f s for %s; still held" % (
                config.lock_key, now - started, who))
            raise contended
        try:
            current = lock.holding(give_up)
        except EtcdLockError as e:  # it may pass; if not, '1' at give_up as ever
            log.debug("looking at lock %s while waiting: %s" % (config.lock_key, e))
            continue
        now = clock()
        if current is None or current.ident != occupant.ident:
            log.info("lock %s: waited %.1f s for %s; its lock %s" % (
                config.lock_key, now - started, who,
                "expired" if current is None else "went to %s" % current.value))
            return
        contended.occupant = current
        if not _missed_refresh(current, config):
            # As much left as a live holder has (no arithmetic on etcd's
            # whole seconds, nor on how long our requests took).
            log.info("lock %s: waited %.1f s for %s; it refreshed" % (
                config.lock_key, now - started, who))
            raise contended


# ---------------------------------------------------------------------------
# The holder: after '0', refresh until told to stop, the parent goes, the
# lock is lost, or its deadline comes.

class Holder:
    """Holds an acquired lock: refreshes it and fences itself."""

    ASKS_PER_ROUND = 2  # members not heard from, asked between two refreshes

    def __init__(self, lock, config, log, watch, valid_until):
        self.lock = lock
        self.config = config
        self.log = log
        self.watch = watch
        self.clock = watch.clock
        self.valid_until = valid_until

    @property
    def fence_at(self):
        """When we stop believing we hold the lock."""
        return self.valid_until - self.config.fence_margin

    def hold(self):
        """Refresh until the lock is lost (raises LockLost).

        A signal arrives as Terminated and a parent gone as ParentGone, from
        the watch's waits.
        """
        # Count from the send time of what set the TTL, not from now.
        next_refresh = self.valid_until - self.config.lock_ttl + self.config.refresh
        failures, last_error = 0, None
        asks = 0  # members not heard from yet, asked per round
        while True:
            now = self.clock()
            if now >= self.fence_at:
                raise LockLost("no refresh of %s succeeded for %.1fs (%s); the lock could "
                               "expire on etcd, so giving it up" % (
                                   self.config.lock_key,
                                   now - (self.valid_until - self.config.lock_ttl),
                                   last_error or "etcd did not answer"), fenced=True)
            if now < next_refresh:
                if asks:
                    # A member listed and not heard from may be of another
                    # cluster: ask, only with time left before the refresh.
                    asks -= 1
                    try:
                        if self.lock.look_around(min(next_refresh, self.fence_at)):
                            continue
                    except EtcdLockError as e:
                        raise LockLost(str(e)) from None
                    asks = 0
                self.watch.sleep(min(next_refresh, self.fence_at) - now)
                continue
            next_refresh = now + self.config.refresh
            asks = self.ASKS_PER_ROUND
            # Leave time for another try on a new connection.
            attempt_deadline = min(self.fence_at,
                                   now + max(self.config.refresh, (self.fence_at - now) / 2))
            try:
                self.valid_until = self.lock.refresh(attempt_deadline)
            except (TransportError, EtcdError, AuthError) as e:
                # Not lost yet: try again until the fence.  Credentials
                # refused (a password changed, two 401s while a member
                # changes) is no word from etcd that the lock is gone.
                failures, last_error = failures + 1, e
                self.log.info("refresh failed (%d in a row): %s" % (failures, e))
                continue
            except LockLost:
                raise
            except EtcdLockError as e:  # e.g. v2 switched off under us
                raise LockLost(str(e)) from None
            if failures:
                self.log.info("refresh works again after %d failures" % failures)
                failures, last_error = 0, None
            self.arm_backstop()

    def arm_backstop(self):
        """Should anything block past the fence, SIGALRM ends the process
        halfway between the fence and the earliest expiry on the server."""
        Backstop.arm((self.fence_at + self.valid_until) / 2 - self.clock(),
                     "lock lost - still here when the lock could expire on etcd "
                     "(stopped, or blocked); exiting")


class Backstop:
    """SIGALRM ends the process, with a line, should anything still block
    at a point in time no wait of ours may pass.  Armed from the moment '0'
    is written until the process ends, and on every way out."""

    why = None

    @classmethod
    def arm(cls, seconds, why):
        if cls.why is None:
            signal.signal(signal.SIGALRM, cls._fire)
        cls.why = why
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))

    @classmethod
    def _fire(cls, signum, frame):
        Log._write(cls.why)
        os._exit(1)


# ---------------------------------------------------------------------------
# Admin commands: who holds the lock (--status), would the helper work with
# this config (--check).  An admin runs these, not ctdbd: they print to
# stdout, for humans or as one JSON object, and never take, refresh or
# change the lock.

def value_fields(value):
    """What a lock's value says of its holder: ours write host, pnn, pid
    and a random id; the original helper writes <uuid4 hex>_<pnn>."""
    if value is None:
        return {"helper": None}
    fields = dict(part.split("=", 1) for part in value.split() if "=" in part)
    if set(fields) >= {"host", "pnn", "pid", "id"}:
        return dict({name: fields[name] for name in ("host", "pnn", "pid", "id")},
                    helper="ctdb_etcd_lock", value=value)
    uuid, _, pnn = value.rpartition("_")
    if len(uuid) == 32 and not uuid.strip("0123456789abcdef") and pnn.isdigit():
        return {"helper": "original", "pnn": pnn, "value": value}
    return {"helper": "unknown", "value": value}


def _occupant_text(occupant):
    about = value_fields(occupant.value)
    if about["helper"] == "ctdb_etcd_lock":
        who = "host %s, pnn %s, pid %s" % (about["host"], about["pnn"], about["pid"])
    elif about["helper"] == "original":
        who = "the original helper, pnn %s (%s)" % (about["pnn"], occupant.value)
    else:
        who = repr(occupant.value)
    who = _printable(_cut(who, 200))  # a value is anybody's: no escapes to the terminal
    left = "no TTL" if occupant.left is None else "%d s left" % occupant.left
    if occupant.granted:
        left += " of %d" % occupant.granted
    return who, left


def _occupant_json(occupant, api):
    if occupant is None:
        return None
    # A value is anybody's, and may be as big as etcd takes: cut for a reader.
    holder = {name: _cut(text, 200) if isinstance(text, str) else text
              for name, text in value_fields(occupant.value).items()}
    return {"holder": holder, "ttl_left": occupant.left,
            "ttl_granted": occupant.granted, "expires": occupant.expires,
            "revision" if api == "v3" else "index": _int(occupant.since) or None}


class Admin:
    """What --status and --check share: the config, the lock's name, one
    transport, and output for humans or as JSON."""

    TIMEOUT = 5.0  # seconds for everything asked of one member

    def __init__(self, config, log, as_json, out):
        self.config = config
        self.log = log
        self.as_json = as_json
        self.out = out
        self.watch = Watch(0)  # an admin's shell: nothing to watch
        self.transport = Transport(config, log, self.watch)

    def say(self, line):
        if not self.as_json:
            self.out.write(line + "\n")
            self.out.flush()

    def dump(self, data):
        import json
        self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        self.out.flush()

    def deadline(self):
        return self.watch.clock() + self.TIMEOUT

    def v3_lock(self):
        """The v3 lock, or None where this etcd has no v3 gateway."""
        lock = V3Lock(self.transport, self.config, None, self.log)
        return lock if lock.find_gateway(self.deadline()) else None

    def v2_lock(self):
        return V2Lock(self.transport, self.config, None, self.log)

    def authenticate(self):
        """A v3 token for the asks of each member, if the config has
        credentials and etcd takes them; what fails is judged later."""
        if self.config.username and self.config.api != "v2":
            try:
                lock = self.v3_lock()
                if lock is not None:
                    lock._authenticate(self.deadline())
            except EtcdLockError as e:
                self.log.debug("no v3 token: %s" % e)

    def look(self, api):
        """(the holder, the queue behind it) of the lock in api; None where
        etcd does not serve api."""
        if api == "v3":
            lock = self.v3_lock()
            return None if lock is None else (lock.holding(self.deadline()), [])
        try:
            queue = self.v2_lock().queue(self.deadline())
        except ApiNotServed:
            return None
        return (queue[0], queue[1:]) if queue else (None, [])


def status(config, log, as_json, out):
    """--status: who holds the lock, in every API that applies.  Exit 0
    held, 1 free, 3 error."""
    admin = Admin(config, log, as_json, out)
    report = {"lock": config.lock_key, "apis": {}}
    admin.say("lock %s" % config.lock_key)
    apis = ("v3", "v2") if config.api == "auto" else (config.api,)
    for api in apis:
        looked = admin.look(api)
        if looked is None:
            if config.api != "auto":
                raise ApiNotServed("%s does not serve the %s API; check api in %s" % (
                    admin.transport.endpoint, api, config.file))
            admin.say("%s  not served by this etcd" % api)
            report["apis"][api] = {"served": False}
            continue
        holding, queue = looked
        report["apis"][api] = dict(_occupant_json(holding, api) or {"holder": None},
                                   served=True, queue=[_occupant_json(h, api) for h in queue])
        if holding is None:
            admin.say("%s  free" % api)
            continue
        who, left = _occupant_text(holding)
        admin.say("%s  held by %s since %s %s; %s" % (
            api, who, "revision" if api == "v3" else "index", _int(holding.since), left))
        for waiting in queue:
            who, left = _occupant_text(waiting)
            admin.say("%s  queued: %s (index %s; %s)" % (api, who, _int(waiting.since), left))
    held = any(about.get("holder") is not None for about in report["apis"].values())
    report["held"] = held
    report["endpoint"] = admin.transport.endpoint
    if as_json:
        admin.dump(report)
    return 0 if held else 1


def check(config, log, as_json, out):
    """--check: the config, every member, and the settings judged for this
    etcd; one line each.  Exit 0 only when the helper would work."""
    admin = Admin(config, log, as_json, out)
    results = []

    def judge(what, level, text, **extra):
        results.append(dict(extra, what=what, level=level, text=text))
        admin.say("%-8s %-7s %s" % (what, level, text))

    judge("config", "ok", "%s: lock %s, api %s, lock_ttl %d s, refresh %g s" % (
        config.file, config.lock_key, config.api, config.lock_ttl, config.refresh))
    for warning in config.ignored:
        judge("config", "warning", warning)
    if config.lock_name_from == "testparm":
        judge("lock", "warning", "the lock's name %s comes from testparm's netbios name on "
              "this node; set lock_name in %s so that every node names the same lock"
              % (config.lock_name, config.file))
    admin.authenticate()
    members = _check_members(admin, judge)
    if members:
        _check_apis(admin, judge, members)
    else:
        level, why = timing_problem(config.lock_ttl, config.refresh)
        judge("timing", "error" if level == "error" else "warning",
              "lock_ttl %d s, refresh %g s (etcd not asked)%s" % (
                  config.lock_ttl, config.refresh, why))
    problems = [r for r in results if r["level"] == "error"]
    judge("result", "error" if problems else "ok",
          "%d problem(s): the helper would not work" % len(problems) if problems else
          "the helper would work with this config")
    if as_json:
        admin.dump({"ok": not problems, "config": config.file, "lock": config.lock_key,
                    "checks": results})
    return 3 if problems else 0


def _check_members(admin, judge):
    """Every member on its own, then whether they make one cluster; the
    members that answered (as Transport.about_member gives them)."""
    config, transport = admin.config, admin.transport
    try:
        listed = transport.endpoints(admin.deadline())
    except TransportError as e:
        judge("members", "error", str(e))
        return []
    answered = []
    for index, endpoint in enumerate(listed):
        about = {"endpoint": endpoint.url}
        try:
            transport.about_member(index, admin.deadline(), admin.v2_lock().headers, about)
        except (TransportError, EtcdError) as e:
            judge("member", "warning", "%s: %s" % (endpoint.url, e), member=about)
            continue
        answered.append(about)
        judge("member", "ok", "%s: etcd %s, cluster %s, v3 %s, v2 %s%s%s" % (
            endpoint.url, about.get("version"), about.get("cluster_id", "?"),
            "served" if about["v3"] else "not served",
            "served" if about["v2"] else "not served",
            ", TLS verified" if endpoint.scheme == "https" else "",
            "" if "status_refused" not in about else
            " (maintenance status refused: %s; %s)" % (
                about["status_refused"], "the cluster from a read of the lock's key"
                if "cluster_id" in about else "cluster unknown")), member=about)
    if not answered:
        judge("members", "error", "no member answered; check the members in %s"
              % config.file)
        return []
    clusters = {}
    for about in answered:
        if "cluster_id" in about:
            clusters.setdefault(about["cluster_id"], []).append(about["endpoint"])
    expected = config.expected_cluster_id
    if len(clusters) > 1:
        judge("cluster", "error", "the members belong to %d clusters (%s); list the "
              "members of one cluster only" % (len(clusters), "; ".join(
                  "%s: %s" % (cid, ", ".join(urls)) for cid, urls in clusters.items())))
    elif expected and clusters and expected not in clusters:
        judge("cluster", "error", "the members belong to cluster %s, not "
              "expected_cluster_id %s" % (next(iter(clusters)), expected))
    else:
        # The helper wants a majority of the listed members to name the
        # lock's cluster, unless expected_cluster_id is set, when the member
        # it took the lock through must (Transport.confirmed): a member that
        # answered without naming its cluster (it refused our token, say)
        # does not count.
        named = [about for about in answered if "cluster_id" in about]
        unnamed = [about["endpoint"] for about in answered if "cluster_id" not in about]
        majority = len(listed) == 1 or (bool(named) if expected else
                                        2 * len(named) > len(listed))
        judge("cluster", "ok" if len(named) == len(listed) else
              "warning" if majority else "error",
              "%d of %d members answered%s%s%s" % (
                  len(answered), len(listed), ", all in cluster %s" % next(iter(clusters))
                  if clusters else "", "; %s did not name its cluster" % ", ".join(unnamed)
                  if unnamed else "", "" if majority else
                  ": the helper needs more than half of the listed members to name the "
                  "lock's cluster; list every member of the cluster, or set "
                  "expected_cluster_id"))
        if len(listed) > 1 and not expected and len(clusters) == 1:
            judge("cluster", "warning", "expected_cluster_id is not set: set "
                  "expected_cluster_id = %s in %s, so that a member of another cluster "
                  "listed by mistake is refused at once, and taking the lock does not "
                  "need a majority of the listed members" % (next(iter(clusters)),
                                                             config.file))
    v2_served = [about["endpoint"] for about in answered if about["v2"]]
    v2_not = [about["endpoint"] for about in answered if not about["v2"]]
    if v2_served and v2_not:
        # One v2 keyspace behind them all, reached only through some: a
        # helper that asks the others cannot see a v2 lock held there.
        judge("api", "error", "the members disagree on v2: served by %s, not by %s; serve "
              "it on every member or on none (etcd's --enable-v2)" % (
                  ", ".join(v2_served), ", ".join(v2_not)))
    return answered


def _check_apis(admin, judge, answered):
    """The lock's APIs, with the credentials configured, against what the
    members serve; then the timing."""
    config, transport = admin.config, admin.transport
    serves = {api: any(about[api] for about in answered) for api in ("v2", "v3")}
    original = False
    if serves["v2"]:
        try:
            original = any(value_fields(entry.value)["helper"] == "original"
                           for entry in admin.v2_lock().entries(admin.deadline()))
            if config.username and config.api != "v3":
                response = transport.request("GET", config.version_prefix + "/auth/enable",
                                             admin.deadline())
                judge("auth", "ok", "v2 accepts user %s" % _shown(config.username)
                      if b'"enabled":true' in response.body.replace(b" ", b"") else
                      "v2 authentication is off: username and password are not checked")
        except AuthError as e:
            judge("auth", "error", str(e))
        except EtcdLockError as e:
            judge("api", "error", "v2: %s" % e)
    if config.api != "v3" and not serves["v2"] and (
            config.api == "v2" or "version_prefix" in config.lines):
        judge("api", "error", "api = %s%s, but no member serves v2 there (etcd 3.6, or "
              "--enable-v2 off); set api = v3 (or auto without version_prefix) in %s"
              % (config.api, " with version_prefix set" if config.api == "auto" else "",
                 config.file))
    elif config.api != "v2" and not serves["v3"]:
        judge("api", "error", "api = %s, but no member serves the v3 gateway; set "
              "api = v2 in %s" % (config.api, config.file))
    elif config.api == "v3" and original:
        judge("api", "error", "api = v3, but the original helper's entries stand in "
              "the v2 queue: it would not see a v3 lock, so two nodes could hold; "
              "use api = auto until every node runs this helper")
    else:
        judge("api", "ok", "%s: %s" % (config.api, " and ".join(
            api for api in ("v3", "v2") if serves[api] and config.api in (api, "auto"))))
    if serves["v3"] and config.api != "v2":
        _check_timing(admin, judge)


def _check_timing(admin, judge):
    """The lock's v3 key may be written with these credentials; lock_ttl
    and refresh, against each other and against etcd's shortest lease (one
    and a half election timeouts, rounded up)."""
    config = admin.config
    try:
        lock = admin.v3_lock()
        if lock is None:
            return
        lock.may_write(admin.deadline())
        _, lease, shortest = lock.grant(1, admin.deadline())
        lock.revoke(lease, admin.deadline())
        if config.username:
            judge("auth", "ok", "v3 accepts user %s, who may write the lock" % _shown(
                config.username) if lock.token else "v3 authentication is off: username "
                "and password are not checked")
    except AuthError as e:
        judge("auth", "error", str(e))
        return
    except EtcdLockError as e:
        judge("timing", "warning", "could not ask etcd for its shortest lease: %s" % e)
        return
    level, why = timing_problem(config.lock_ttl, config.refresh, shortest)
    judge("timing", level, "lock_ttl %d s, refresh %g s; etcd's shortest lease %d s "
          "(election timeout about %.1f s)%s" % (config.lock_ttl, config.refresh, shortest,
                                                 shortest / 1.5, why))


# ---------------------------------------------------------------------------
# Command line.

def parse_args(argv):
    """(verbosity, config file or None, mode, as JSON) from ``-v``/``-vv``/
    ``-vvv`` (or ``--verbose``, repeated), ``-c FILE`` (``--config FILE``)
    and, for an admin, ``--status`` or ``--check`` (with ``--json``),
    ``--help`` or ``--version``.  Mode None is the helper ctdbd runs.  (Not
    argparse: it costs more start-up time than the rest of the helper's
    imports.)"""
    verbose, config, mode, as_json, wants_help, args = 0, None, None, False, False, list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-c", "--config"):
            if not args:
                raise _usage("%s needs a file" % arg)
            config = args.pop(0)
        elif arg.startswith("--config="):
            config = arg[len("--config="):]
        elif arg.startswith("-c"):
            config = arg[2:]
        elif arg == "--verbose":
            verbose += 1
        elif len(arg) > 1 and arg[0] == "-" and arg[1:].strip("v") == "":
            verbose += len(arg) - 1
        elif arg in ("--status", "--check"):
            if mode not in (None, arg[2:]):
                raise _usage("--status and --check go one at a time")
            mode = arg[2:]
        elif arg == "--json":
            as_json = True
        elif arg in ("-h", "--help", "--version"):
            wants_help = arg[2:] or "help"
        else:
            raise _usage("unknown argument %s" % _shown(arg))
    if mode is None and as_json and not wants_help:
        raise _usage("--json goes with --status or --check only (ctdbd reads a status byte "
                     "on stdout)")
    return verbose, config, wants_help or mode, as_json


USAGE = """usage: %(prog)s [-v...] [-c FILE]
       %(prog)s --status [-c FILE] [--json] [-v...]
       %(prog)s --check [-c FILE] [--json] [-v...]

Without an option but -v and -c: the CTDB cluster lock helper, run by ctdbd
from ctdb.conf (cluster lock = !%(path)s); it writes one status byte
to stdout: 0 taken (held until SIGTERM), 1 contention, 3 error.

  --status   who holds the cluster lock now, in every API that applies;
             exit 0 held, 1 free, 3 error.  Changes nothing.
  --check    check the config file and every etcd member, and judge the
             settings for that etcd; exit 0 only if the helper would work.
  --json     one JSON object on stdout instead of lines for humans.
  -c FILE    the config file (default: $CTDB_BASE/etcd, else /etc/ctdb/etcd).
  -v         more detail on stderr (-vv requests, -vvv their bodies).
  --version  the version; --help: this text.

See ctdb-etcd(7).
"""


def _usage(problem):
    return ConfigError("bad command line: %s; usage: %s [-v...] [-c FILE] "
                       "(or --status/--check, see --help)" % (problem, PROG))


class StatusPipe:
    """stdout to ctdbd: one status character, once."""

    def __init__(self, fd=1):
        import stat
        self.fd = fd
        self.written = None
        self.is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)

    def write(self, status):
        if self.written is None and self.fd is not None:
            self.written = status
            try:
                os.write(self.fd, status)
            except OSError as e:  # EPIPE, or anything else: nobody hears us
                raise ParentGone("cannot write the status to stdout: %s"
                                 % (e.strerror or e)) from None

    def close(self):
        """ctdbd reads EOF: after '0', the lock is lost."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _open_std_fds():
    """fds 0 and 2 closed at start are opened on /dev/null, so that nothing
    of ours lands there by chance; False if fd 1 is closed."""
    for fd in (0, 2, 1):
        try:
            os.fstat(fd)
        except OSError:
            if fd == 1:
                return False
            spare = os.open(os.devnull, os.O_RDWR)
            if spare != fd:
                os.dup2(spare, fd)
                os.close(spare)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if _admin_mode(argv):
        return admin_main(argv)
    # Our parent first, then the signals: either may come at any instant.
    ppid = os.getppid()
    Signals.catch()
    log = Log()
    std_fds = _open_std_fds()
    Log.open()
    if not std_fds:
        # Nobody could hear a status, not even a '0': take nothing.
        log.error("stdout is closed, so nobody can hear a status; not taking the lock")
        return 3
    Signals.wake_waits()
    status = StatusPipe()
    watch = Watch(ppid, stdout=status.fd if status.is_pipe else None)
    try:
        return run(argv, log, status, watch)
    except BaseException as e:  # a bug on the way out: still one line, no traceback
        log.error("internal error leaving - %s: %s; please report it" % (
            type(e).__name__, e))
        return 3


class Life:
    """What the helper has to give back when it goes: the lock (once made),
    and the holder (once '0' was said), whose lock the process never
    outlives."""

    __slots__ = ("config", "lock", "holder")

    def __init__(self):
        self.config = self.lock = self.holder = None


def run(argv, log, status, watch):
    """The helper's life: take the lock, hold it, give it back.  Every way
    out is an exception, and EXITS says what each means to ctdbd."""
    life = Life()
    try:
        if watch.orphan:
            raise ParentGone("parent gone before we started")
        log.verbose, named, _, _ = parse_args(argv)
        life.config = config = read_config(
            _config_path(named), required=named is not None,
            name_lock=lambda config_file: netbios_name(config_file, watch))
        for warning in config.ignored:
            log.error(warning)
        if not status.is_pipe:
            log.error("stdout is not a pipe: ctdbd would give its helper one, and a "
                      "reader gone cannot be seen")
        value = our_value(watch)
        watch.check()

        # Take.
        life.lock = lock = make_lock(config, Transport(config, log, watch), value, log)
        # ctdbd's main daemon runs the end-of-recovery check, which wants
        # '1' at once; elections are its recovery daemon's (ctdb_recoverd).
        valid_until = take(lock, config, log, watch, 0 if _comm(watch.ppid) == "ctdbd"
                           else config.handover_wait)
        # No '0' before the lock's cluster is confirmed: the lock stays
        # valid meanwhile, and the wait ends well before its fence.
        fence, now = valid_until - config.fence_margin, watch.clock()
        lock.transport.confirm_cluster(now + min((fence - now) / 2, CONFIRM_WAIT))
        if watch.clock() >= fence:
            raise TransportError("etcd answered too late to trust the lock")

        # Hold.
        holder = Holder(lock, config, log, watch, valid_until)
        holder.arm_backstop()  # from '0' on, nothing may block unguarded
        status.write(STATUS_HELD)
        life.holder = holder
        log.info("took lock %s (%s) as %s" % (config.lock_key, lock.api, lock.value))
        holder.hold()
        raise AssertionError("the hold ended without a reason")
    except (Exception, Terminated, ParentGone) as e:
        # Give back.
        return _leave(e, life, log, status, watch)


# The ways out, first match first: the exit code; the status byte for ctdbd
# (None: none, or stdout closes); whether it is said before the lock goes
# back (a '3' need not wait for that) or after (a '1' only once what we
# took is back); the seconds the release may take; the line on stderr.
# Once '0' was said, stdout always closes first: ctdbd learns that the lock
# goes before it goes, and the release never outlives the lock.
EXITS = (
    (ConfigError, 3, STATUS_ERROR, True, 1,
     lambda e, key, held: ("error", "config error - %s" % e)),
    (LockContended, 1, STATUS_CONTENDED, False, 1,
     lambda e, key, held: ("info", "lock %s is held by %s%s" % (
         key, e, "" if e.occupant.left is None else " (%d s left)" % e.occupant.left))),
    # Refreshes of ours may still be on their way to etcd, and each would
    # extend the lock: release() queues its compare-and-delete behind them.
    (LockLost, 1, None, False, 1,
     lambda e, key, held: ("error", "lock lost - %s" % e)),
    # Give back whatever we may have taken (a create whose answer was lost).
    (EtcdLockError, 3, STATUS_ERROR, True, 1,
     lambda e, key, held: ("error", "cannot take lock %s - %s" % (key, e))),
    # ctdbd asked us to go, or is gone: no status, and quickly, since ctdbd
    # may be racing for the lock.
    (Terminated, 0, None, False, 2,
     lambda e, key, held: ("info", "releasing lock %s: terminated by %s" % (
         key, _signal_name(e.args[0])) if held else None)),
    (ParentGone, 0, None, False, 0.4,
     lambda e, key, held: ("info", "releasing lock %s: %s" % (key, e) if held else
                           "%s; not taking the lock" % e)),
    # A bug of ours: one line, never a traceback, and the lock goes back.
    (Exception, 3, STATUS_ERROR, True, 1,
     lambda e, key, held: ("error", "internal error - %s: %s; please report it" % (
         type(e).__name__, e))),
)


def _leave(error, life, log, status, watch):
    """Say what ``error`` means (EXITS), give the lock back, and the exit code."""
    watch.leave()  # nothing interrupts the way out
    code, byte, before, seconds, say = next(
        row[1:] for row in EXITS if isinstance(error, row[0]))
    held = life.holder is not None
    if held or byte is None:
        status.close()
    level, line = say(error, life.config.lock_key if life.config else "?", held)
    if line:
        (log.error if level == "error" else log.info)(line)
    if before:
        _say_status(status, byte)
    # A release that fails is worth a line only when ctdbd asked us to go
    # while we held the lock; otherwise the line above said it all.
    _release(life.lock, seconds, log, quiet=not (held and code == 0),
             until=life.holder.valid_until if held else None)
    if not before:
        _say_status(status, byte)
    return code


def _say_status(status, byte):
    if byte:
        try:
            status.write(byte)
        except ParentGone:
            pass  # nobody hears it


def admin_main(argv):
    """--status and --check: an admin at a shell asks, not ctdbd."""
    Signals.catch()
    Signals.wake_waits()
    log, as_json = Log(), "--json" in argv

    def failed(text, quiet=False):
        # With --json, one JSON object on stdout whatever happened.
        if not quiet:
            log.error(text)
        if as_json:
            import json
            try:
                sys.stdout.write(json.dumps({"error": text}) + "\n")
                sys.stdout.flush()
            except OSError:  # nobody reads it
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 3
    try:
        log.verbose, named, mode, as_json = parse_args(argv)
        if mode == "help":
            sys.stdout.write(USAGE % {"prog": PROG, "path": "/usr/libexec/ctdb/" + PROG})
            return 0
        if mode == "version":
            sys.stdout.write("%s %s\n" % (PROG, __version__))
            return 0
        config = read_config(_config_path(named), required=named is not None,
                             name_lock=lambda config_file: netbios_name(config_file, Watch(0)))
        return (status if mode == "status" else check)(config, log, as_json, sys.stdout)
    except Terminated as e:
        return failed("terminated by %s" % _signal_name(e.args[0]), quiet=True)
    except BrokenPipeError:  # | head: nobody reads the rest
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 3
    except EtcdLockError as e:
        what = "config error" if isinstance(e, ConfigError) else "cannot ask etcd"
        return failed("%s - %s" % (what, e))
    except Exception as e:  # a bug of ours: one line, never a traceback
        return failed("internal error - %s: %s; please report it" % (type(e).__name__, e))


def _admin_mode(argv):
    """--status, --check, --help or --version among the arguments (not as
    -c's file): an admin asks, and no status byte is due.  (Usage and the
    version never begin with a status character, should ctdb.conf name the
    helper with one of them by mistake.)"""
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--config"):
            next(args, None)
        elif arg in ("--status", "--check", "-h", "--help", "--version"):
            return True
    return False


def _config_path(named):
    return named or os.path.join(os.environ.get("CTDB_BASE", "/etc/ctdb"), "etcd")


def _release(lock, seconds, log, quiet=False, until=None):
    """Give the lock back within seconds; a failure is one line (at -v only,
    if quiet).  ``until``: once '0' was written, the lock's earliest expiry,
    which the process never outlives.  The backstop guards this wait too."""
    if lock is None:
        return
    clock = lock.transport.clock
    hard_stop = seconds + 1
    if until is not None:
        # Past it already (we were stopped): queue the release, wait for nothing.
        left = max(until - clock(), 0)
        seconds, hard_stop = min(seconds, left / 2), max(min(hard_stop, left * 0.9), 0.1)
    Backstop.arm(hard_stop, "still blocked giving the lock back; exiting")
    try:
        lock.release(clock() + seconds)
    except EtcdLockError as e:
        (log.info if quiet else log.error)(
            "could not release lock - %s; it expires by its TTL" % e)
    finally:
        lock.transport.close()  # without a reset, so etcd reads all we queued


if __name__ == "__main__":
    code = main()
    # Done: a late signal must not kill the interpreter on its way out
    # (Python restores the default action of signals it handled).  Blocked,
    # not ignored: a SIGTERM that came just before SIG_IGN replaced our
    # handler would be reported as "ignored due to race condition", with a
    # traceback, and ctdbd sends SIGTERM the moment it reads '1'.
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.pthread_sigmask(signal.SIG_BLOCK, Signals.caught | {signal.SIGALRM})
    sys.exit(code)
