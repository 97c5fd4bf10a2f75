"""Servers that answer as no real etcd would: only for answers a real etcd
will not give (garbage, truncation, silence, floods, resets).

    FakeEtcd(answer)            every connection: read a request, answer
                                with bytes, run answer(sock), or say nothing
    Proxy(port, tls=None)       stands before a real etcd member and passes
                                every exchange through, recorded, until a
                                test sets proxy.fault: then each request
                                gets what fault(sock, answer) does with it
"""

import socket
import socketserver
import ssl
import threading
import time


class FakeEtcd:
    """Reads one request per connection and answers it: ``answer`` is the
    bytes to send, a callable given the socket, or None to hold the
    connection in silence."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.connections += 1
                try:
                    self.request.recv(65536)
                    if outer.answer is None:
                        time.sleep(30)
                    elif callable(outer.answer):
                        outer.answer(self.request)
                    else:
                        self.request.sendall(outer.answer)
                except OSError:  # the helper went away: nothing to tell
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------
# HTTP/1.1 messages as they come: requests, and answers as etcd sends them

def read_message(sock, buffer):
    """One whole request or answer from sock, as it was sent (a body with
    Content-Length, chunked, or none): (message, rest of buffer), or
    (None, b"") at the end of the stream."""
    stream = _Stream(sock, buffer)
    try:
        end = stream.find(b"\r\n\r\n", 0) + 4
        headers = {}
        for line in stream.data[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            while True:
                eol = stream.find(b"\r\n", end)
                size, end = int(stream.data[end:eol].split(b";")[0], 16), eol + 2
                if size == 0:  # then trailers, up to an empty line
                    while True:
                        eol = stream.find(b"\r\n", end)
                        empty, end = eol == end, eol + 2
                        if empty:
                            break
                    break
                end += size + 2  # the chunk and its CRLF
        else:
            end += int(headers.get(b"content-length", b"0"))
        stream.fill(end)
    except EOFError:
        return None, b""
    return stream.data[:end], stream.data[end:]


class _Stream:
    def __init__(self, sock, data):
        self.sock, self.data = sock, data

    def fill(self, length):
        while len(self.data) < length:
            more = self.sock.recv(65536)
            if not more:
                raise EOFError()
            self.data += more

    def find(self, text, start):
        while self.data.find(text, start) < 0:
            self.fill(len(self.data) + 1)
        return self.data.find(text, start)


def body_of(message):
    return message.partition(b"\r\n\r\n")[2]


def path_of(request):
    """'POST /v3/kv/txn' of a request."""
    return " ".join(request.split(b"\r\n", 1)[0].decode("latin-1").split()[:2])


class Exchange:
    def __init__(self, at, request, answer):
        self.at = at  # when the request came (monotonic)
        self.request = request
        self.answer = answer
        self.path = path_of(request)

    def __repr__(self):
        return "Exchange(%s)" % self.path


# ---------------------------------------------------------------------------
# A proxy before a real member

class Proxy:
    """Passes each request to a real etcd member and its answer back whole,
    recording both (``exchanges``: those answered faithfully).

    ``fault``: None, or a callable (sock, request, answer) that does what a
    broken server would with a request etcd has answered with ``answer``;
    ``fault_if``: which requests it applies to (default: all).
    ``tls``: a server-side SSLContext; ``stall_handshakes``: new connections
    get their ClientHello read and no answer.
    """

    def __init__(self, upstream_port, tls=None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.tls = tls
        self.fault = None
        self.fault_if = lambda request: True
        self.faulted = []  # exchanges the fault had
        self.stall_handshakes = False
        self.exchanges = []
        self.sockets = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        upstream = None
        try:
            if self.tls is not None:
                if self.stall_handshakes:
                    sock.recv(65536)  # the ClientHello, and then nothing
                    self.stopped.wait(30)
                    return
                sock = self.tls.wrap_socket(sock, server_side=True)
                with self.lock:
                    self.sockets.append(sock)
            upstream = socket.create_connection(self.upstream, timeout=10)
            buffer = upstream_buffer = b""
            while not self.stopped.is_set():
                request, buffer = read_message(sock, buffer)
                if request is None:
                    return
                at = time.monotonic()
                upstream.sendall(request)
                answer, upstream_buffer = read_message(upstream, upstream_buffer)
                if answer is None:
                    return
                fault = self.fault
                if fault is not None and self.fault_if(request):
                    self.faulted.append(Exchange(at, request, answer))
                    if fault(sock, request, answer) is False:
                        return  # the fault closed the connection
                    continue
                sock.sendall(answer)
                self.exchanges.append(Exchange(at, request, answer))
        except (OSError, ssl.SSLError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            sock.close()

    def last_answered(self):
        """When the last faithfully answered request came (monotonic)."""
        return self.exchanges[-1].at if self.exchanges else None

    def close(self):
        self.stopped.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass


def reset(sock):
    """Close with a reset (RST), not a FIN: SO_LINGER with a zero timeout."""
    import struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
