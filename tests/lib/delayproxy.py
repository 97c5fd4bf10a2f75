"""A TCP proxy on loopback whose client->server direction can be delayed at
runtime (and, when asked, the way back): late refreshes, a POST in flight at
SIGTERM, raft messages that travel slowly. Used by test_network.py,
test_handover.py, test_v2_members.py and test_cluster.py."""

import queue
import socket
import threading
import time


class DelayProxy:
    """Listens on 127.0.0.1; forwards each connection to 127.0.0.1:port.

    client -> etcd bytes are queued with a send time (the time they were
    read plus ``delay`` as it is then) and go in order; the client's end of
    stream is queued the same way (FIN_GRACE later), so bytes a client sent
    before it went away still reach etcd, late, as on a slow network.
    etcd -> client bytes go at once, or ``back_delay`` later (in order) when
    that is set: before a member's peer port, that is the way the member's
    own raft messages travel to the peers that dialled it.
    ``requests``: (time read, first bytes) of each chunk a client sent.
    """

    # A client's end of stream reaches etcd this long after its last bytes:
    # etcd's v3 gateway cancels a request whose client has gone, and a FIN
    # right behind the helper's last request would test that race, not the
    # helper.
    FIN_GRACE = 1.0

    def __init__(self, port):
        self.port_upstream = port
        self.delay = 0.0
        self.back_delay = 0.0
        self.requests = []
        self.only = None  # delay only data holding these bytes (and what follows it)
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.RLock()
        self.sockets = [self.listener]
        self.threads = []
        self.connections = 0
        self.clients = []  # the client end of each connection, for reset()
        self._start(self._accept)

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port_upstream), 5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:  # close() sees these sockets and threads, or we see it
                if self.closed.is_set():
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
                self.clients.append(client)
                self.connections += 1
                pending, answers = queue.Queue(), queue.Queue()
                self._start(self._client_reader, client, pending)
                self._start(self._delayed_sender, upstream, pending)
                self._start(self._upstream_reader, upstream, answers)
                self._start(self._answer_sender, client, answers)

    def _client_reader(self, client, pending):
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if data:
                self.requests.append((time.monotonic(), data[:60]))
            delay = self.delay if self.only is None or (data and self.only in data) else 0
            pending.put((time.monotonic() + delay + (0 if data else self.FIN_GRACE),
                         data or None))
            if not data:
                return

    def _delayed_sender(self, upstream, pending):
        while not self.closed.is_set():
            try:
                when, data = pending.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.closed.wait(max(0.0, when - time.monotonic())):
                return
            try:
                if data is None:
                    upstream.shutdown(socket.SHUT_WR)
                    return
                upstream.sendall(data)
            except OSError:
                return

    def _upstream_reader(self, upstream, answers):
        while True:
            try:
                data = upstream.recv(65536)
            except OSError:
                data = b""
            answers.put((time.monotonic() + self.back_delay, data or None))
            if not data:
                return

    def _answer_sender(self, client, answers):
        # After the client is gone, keep taking (and dropping) etcd's answers
        # until etcd closes: requests still on their way must be served.
        client_ok = True
        while not self.closed.is_set():
            try:
                when, data = answers.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.closed.wait(max(0.0, when - time.monotonic())):
                return
            if data is None:
                break
            if client_ok:
                try:
                    client.sendall(data)
                except OSError:
                    client_ok = False
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self):
        """Reset every client connection made so far (RST: an answer lost on
        the way back); the proxy keeps listening for new ones."""
        import struct
        with self.lock:
            clients, self.clients = self.clients, []
        for client in clients:
            try:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RDWR)
                client.close()
            except OSError:
                pass

    def sent(self, start):
        """How many chunks the clients sent that begin with ``start``."""
        return sum(1 for _, data in list(self.requests) if data.startswith(start))

    def close(self):
        with self.lock:
            self.closed.set()
            sockets, threads = list(self.sockets), list(self.threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads), "proxy threads left running"
