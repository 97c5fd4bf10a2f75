"""A small DNS server for tests, on the standard library only: UDP and TCP
port 53 on a loopback address of its own, answering from records a test sets.

    responder = DnsResponder()              # picks a free 127.53.0.x, starts
    responder.srv("_etcd-client._tcp.example.test", (0, 10, 2379, "m1.example.test"))
    responder.a("m1.example.test", "127.0.0.1")
    responder.nodata("_etcd._tcp.example.test")   # NOERROR, no records
    responder.mode = "truncate"             # UDP answers: TC bit, no records
    responder.count("tcp", "SRV")           # queries seen, by transport and type
    responder.close()

Names are matched without case and without a trailing dot.  A name with
records (of any type), or one given to nodata(), answers NOERROR with the
records of the type asked (perhaps none); any other name answers
``unknown_rcode`` (NXDOMAIN unless set).

``mode`` changes the answers to queries of the types in ``mode_types``
(SRV unless set; others are answered normally):

    "normal"    the records
    "truncate"  over UDP: header with the TC bit and the question, no records
                (the client must ask again over TCP); over TCP: the records
    "garbage"   the query's id and the QR bit, then bytes no DNS message has
                (claims answers that are not there)
    "noise"     random bytes, not even the query's id
    "silent"    no answer at all (TCP: the connection is held, then closed)
    "servfail"  rcode 2, no records

``query(server, name, qtype, tcp=False)`` is a tiny client for checking
the responder (and what a namespace's resolver sees) on its own.
"""

import os
import random
import select
import socket
import struct
import threading

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
         "AAAA": 28, "SRV": 33, "OPT": 41, "ANY": 255}
TYPE_NAMES = {number: name for name, number in TYPES.items()}

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
MODES = ("normal", "truncate", "garbage", "noise", "silent", "servfail")
TTL = 5


def normal(name):
    return name.rstrip(".").lower()


def encode_name(name, message=None, offsets=None):
    """A name in wire format.  With ``message``/``offsets`` (suffix -> offset
    of a name already in the message), the longest known suffix becomes a
    compression pointer, and the new suffixes are noted."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    out = b""
    for i in range(len(labels)):
        suffix = ".".join(labels[i:]).lower()
        if offsets is not None and suffix in offsets:
            return out + struct.pack(">H", 0xC000 | offsets[suffix])
        if offsets is not None and message is not None:
            where = len(message) + len(out)
            if where < 0x3FFF:
                offsets[suffix] = where
        label = labels[i].encode("idna")
        if not 0 < len(label) < 64:
            raise ValueError("bad label in %r" % name)
        out += bytes([len(label)]) + label
    return out + b"\0"


def read_name(message, offset):
    """(name, offset after it) from a message, following pointers."""
    labels, end, jumps = [], None, 0
    while True:
        if offset >= len(message):
            raise ValueError("name runs past the message")
        length = message[offset]
        if length & 0xC0 == 0xC0:
            jumps += 1
            if jumps > 30 or offset + 1 >= len(message):
                raise ValueError("bad compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        if length & 0xC0:
            raise ValueError("bad label length")
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        label = message[offset + 1:offset + 1 + length]
        if len(label) < length:
            raise ValueError("label runs past the message")
        labels.append(label.decode("ascii", "replace"))
        offset += 1 + length


def parse_question(message):
    """(id, flags, qname, qtype, qclass, end of question) of a query."""
    if len(message) < 12:
        raise ValueError("short message")
    ident, flags, qdcount = struct.unpack(">HHH", message[:6])
    if qdcount < 1:
        raise ValueError("no question")
    name, offset = read_name(message, 12)
    if offset + 4 > len(message):
        raise ValueError("question cut short")
    qtype, qclass = struct.unpack(">HH", message[offset:offset + 4])
    return ident, flags, name, qtype, qclass, offset + 4


def parse_message(message):
    """A whole answer: {"id", "flags", "rcode", "tc", "question", "answers"}
    with answers as (name, type name, data): A/AAAA an address, SRV a
    (priority, weight, port, target) tuple, others the raw bytes.
    ValueError for anything that does not parse."""
    try:
        return _parse_message(message)
    except (struct.error, IndexError, UnicodeError) as e:
        raise ValueError("not a DNS message: %s" % e) from None


def _parse_message(message):
    ident, flags, qdcount, ancount = struct.unpack(">HHHH", message[:8])
    offset, question = 12, None
    for _ in range(qdcount):
        name, offset = read_name(message, offset)
        qtype, = struct.unpack(">H", message[offset:offset + 2])
        question = (name, TYPE_NAMES.get(qtype, qtype))
        offset += 4
    answers = []
    for _ in range(ancount):
        name, offset = read_name(message, offset)
        rtype, _, _, length = struct.unpack(">HHIH", message[offset:offset + 10])
        offset += 10
        rdata = message[offset:offset + length]
        if len(rdata) < length:
            raise ValueError("record cut short")
        if rtype == 1:
            data = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == 28:
            data = socket.inet_ntop(socket.AF_INET6, rdata)
        elif rtype == 33:
            data = struct.unpack(">HHH", rdata[:6]) + (read_name(message, offset + 6)[0],)
        else:
            data = rdata
        answers.append((name, TYPE_NAMES.get(rtype, rtype), data))
        offset += length
    return {"id": ident, "flags": flags, "rcode": flags & 0xF, "tc": bool(flags & 0x0200),
            "question": question, "answers": answers}


def query(server, name, qtype="SRV", tcp=False, timeout=2.0):
    """Ask ``server`` (port 53) one question; the parsed answer."""
    ident = random.getrandbits(16)
    message = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + encode_name(name) \
        + struct.pack(">HH", TYPES[qtype], 1)
    if tcp:
        with socket.create_connection((server, 53), timeout) as sock:
            sock.sendall(struct.pack(">H", len(message)) + message)
            size, = struct.unpack(">H", _recv_exactly(sock, 2))
            answer = _recv_exactly(sock, size)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((server, 53))
            sock.send(message)
            answer = sock.recv(65535)
    parsed = parse_message(answer)
    if parsed["id"] != ident:
        raise ValueError("answer with another id")
    return parsed


def _recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("connection closed after %d of %d bytes" % (len(data), size))
        data += chunk
    return data


def free_address(first=1, last=254, net="127.53.0."):
    """Bound UDP and TCP sockets on port 53 of the first free address of net."""
    for host in range(first, last + 1):
        address = net + str(host)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((address, 53))
            tcp.bind((address, 53))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return address, udp, tcp
    raise OSError("no free port 53 on %s%d-%d" % (net, first, last))


def quiet_address(net="127.53.1."):
    """A loopback address where nothing listens on UDP or TCP port 53 now."""
    for host in range(1, 255):
        try:
            address, udp, tcp = free_address(host, host, net)
        except OSError:
            continue
        udp.close()
        tcp.close()
        return address
    raise OSError("no quiet address in %s0/24" % net)


class DnsResponder:
    def __init__(self, address=None):
        if address is None:
            self.address, self._udp, self._tcp = free_address()
        else:
            self.address, self._udp, self._tcp = free_address(
                int(address.rsplit(".", 1)[1]), int(address.rsplit(".", 1)[1]),
                address.rsplit(".", 1)[0] + ".")
        self.records = {}  # name -> {type name: [data, ...]}
        self.mode = "normal"
        self.mode_types = ("SRV",)
        self.unknown_rcode = NXDOMAIN
        self.compress_targets = False  # SRV targets as pointers (RFC 2782 says don't)
        self.queries = []  # (transport, name, type name)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns = []
        self._threads = []
        self._tcp.listen(16)
        self._start(self._serve_udp)
        self._start(self._serve_tcp)

    # -- what the test sets ---------------------------------------------------

    def add(self, name, rtype, *data):
        with self._lock:
            self.records.setdefault(normal(name), {}).setdefault(rtype, []).extend(data)

    def srv(self, name, *records):
        """SRV records: (priority, weight, port, target) each, in answer order."""
        for record in records:
            priority, weight, port, target = record
            self.add(name, "SRV", (int(priority), int(weight), int(port), target))

    def a(self, name, *addresses):
        self.add(name, "A", *addresses)

    def aaaa(self, name, *addresses):
        self.add(name, "AAAA", *addresses)

    def nodata(self, *names):
        """Names that exist but have no records: NOERROR, empty answer."""
        with self._lock:
            for name in names:
                self.records.setdefault(normal(name), {})

    def clear(self):
        with self._lock:
            self.records.clear()
            self.queries = []
            self.mode = "normal"

    def count(self, transport=None, rtype=None, name=None):
        """How many queries came in, of a transport ('udp', 'tcp'), type, name."""
        with self._lock:
            return sum(1 for t, n, q in self.queries
                       if (transport is None or t == transport)
                       and (rtype is None or q == rtype)
                       and (name is None or n == normal(name)))

    # -- answers --------------------------------------------------------------

    def answer(self, message, transport):
        """The bytes to send back for one query, or None for no answer."""
        try:
            ident, flags, qname, qtype, qclass, end = parse_question(message)
        except (ValueError, struct.error):
            return None
        if flags & 0x8000:
            return None  # an answer sent to us: not ours to answer
        tname = TYPE_NAMES.get(qtype, str(qtype))
        with self._lock:
            self.queries.append((transport, normal(qname), tname))
            mode = self.mode if tname in self.mode_types else "normal"
            known = self.records.get(normal(qname))
            found = list((known or {}).get(tname, ()))
            rcode = NOERROR if known is not None else self.unknown_rcode
        if mode == "silent":
            return None
        if mode == "noise":
            return os.urandom(random.randint(1, 40))
        if mode == "garbage":
            # Our id and QR, an answer count of 3, then nothing that parses.
            return struct.pack(">HHHHHH", ident, 0x8180, 1, 3, 0, 0) \
                + b"\x3f\xff\xc0\xfe" + os.urandom(7)
        question = message[12:end]
        rd = flags & 0x0100
        opcode = flags & 0x7800
        head_flags = 0x8000 | opcode | 0x0400 | rd | 0x0080  # QR AA RD RA
        if mode == "servfail":
            return struct.pack(">HHHHHH", ident, head_flags | SERVFAIL, 1, 0, 0, 0) + question
        if qclass != 1 or opcode:
            return struct.pack(">HHHHHH", ident, head_flags | 4, 1, 0, 0, 0) + question
        if mode == "truncate" and transport == "udp":
            return struct.pack(">HHHHHH", ident, head_flags | 0x0200 | rcode, 1, 0, 0, 0) \
                + question
        if rcode != NOERROR:
            found = []
        body = bytearray(struct.pack(">HHHHHH", ident, head_flags | rcode, 1, len(found),
                                     0, 0))
        offsets = {}
        body += encode_name(qname, body, offsets) + struct.pack(">HH", qtype, qclass)
        for data in found:
            body += struct.pack(">H", 0xC00C)  # owner: the question's name
            if tname == "A":
                rdata = socket.inet_pton(socket.AF_INET, data)
            elif tname == "AAAA":
                rdata = socket.inet_pton(socket.AF_INET6, data)
            elif tname == "SRV":
                priority, weight, port, target = data
                start = len(body) + 10 + 6
                rdata = struct.pack(">HHH", priority, weight, port)
                if self.compress_targets:
                    rdata += encode_name(target, bytes(start), offsets)
                else:
                    rdata += encode_name(target)
            else:
                rdata = bytes(data)
            body += struct.pack(">HHIH", qtype, 1, TTL, len(rdata)) + rdata
        return bytes(body)

    # -- serving --------------------------------------------------------------

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name="dns-%s" % target.__name__)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _serve_udp(self):
        while not self._closed.is_set():
            ready, _, _ = select.select([self._udp, self._wake_r], [], [])
            if self._closed.is_set():
                return
            if self._udp not in ready:
                continue
            try:
                message, peer = self._udp.recvfrom(65535)
            except OSError:
                continue
            reply = self.answer(message, "udp")
            if reply is not None and len(reply) > 512 and self.mode not in ("garbage", "noise"):
                # Too long for plain UDP (no EDNS here): header and question, TC.
                end = parse_question(message)[5]
                reply = reply[:2] + struct.pack(">H", struct.unpack(">H", reply[2:4])[0]
                                                | 0x0200) + b"\0\1\0\0\0\0\0\0" \
                    + message[12:end]
            if reply is not None:
                try:
                    self._udp.sendto(reply, peer)
                except OSError:
                    pass

    def _serve_tcp(self):
        while not self._closed.is_set():
            ready, _, _ = select.select([self._tcp, self._wake_r], [], [])
            if self._closed.is_set():
                return
            if self._tcp not in ready:
                continue
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                continue
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    return
                self._conns.append(conn)
            self._start(self._serve_conn, conn)

    def _serve_conn(self, conn):
        """Length-prefixed queries, one after another, until EOF."""
        try:
            while not self._closed.is_set():
                head = self._read(conn, 2)
                if head is None:
                    return
                message = self._read(conn, struct.unpack(">H", head)[0])
                if message is None:
                    return
                reply = self.answer(message, "tcp")
                if reply is None:
                    # silent: hold the connection until the client goes
                    self._read(conn, 65536)
                    return
                conn.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def _read(self, conn, size):
        data = b""
        while len(data) < size:
            ready, _, _ = select.select([conn, self._wake_r], [], [])
            if self._closed.is_set():
                return None
            chunk = conn.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self):
        """Stop every thread and close every socket; idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            threads, conns = list(self._threads), list(self._conns)
        self._wake_w.send(b"x")
        for thread in threads:
            thread.join(5)
        alive = [thread.name for thread in threads if thread.is_alive()]
        for sock in conns + [self._udp, self._tcp, self._wake_r, self._wake_w]:
            try:
                sock.close()
            except OSError:
                pass
        assert not alive, "DNS responder threads left running: %s" % alive

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
