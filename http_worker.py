"""gunicorn's threaded worker, closing connections without holding up the others.

gunicorn (26 and later) closes a finished connection "gracefully" (RFC 9112, section 9.6): it
sends its FIN, then reads until the client closes too, so that unread request bytes cannot turn
into a reset that cuts the response short. The gthread worker does this on its main thread,
the one that accepts connections and hands them to the threads, blocking for up to 2 s per
connection. One client that sends `Connection: close` and then keeps its side open stalls every
other request of the worker for those 2 s (tests/test_e2e.py), and under load every
close waits for its client's event loop. Here the same lingering close is done by the worker's
event loop: the FIN goes out at once, the socket waits in the poller for the client's close
(unless it has come already), and one that never comes is cut off after the same 2 s.

Upstream: the lingering close came with benoitc/gunicorn#3590 (util.close_graceful); no upstream
issue reports the stall. Built on gthread's TConn and accept(), so gunicorn stays pinned exactly
(requirements.txt): check tests/test_e2e.py against the stock gthread worker before upgrading.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections import deque

from gunicorn.workers import gthread

LINGER_SECONDS = 2.0  # gunicorn's own bound for a graceful close (util.close_graceful)
LINGER_BYTES = 65536  # read and dropped at most, as gunicorn does


class Connection(gthread.TConn):
    """A connection whose graceful close is left to the worker's event loop."""

    def __init__(self, worker: ThreadWorker, *args):
        super().__init__(*args)
        self.worker = worker

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class ThreadWorker(gthread.ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lingering: deque[Lingering] = deque()  # oldest first

    def accept(self, listener):
        """gthread's accept, making a Connection."""
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client.setblocking(True)
        self.enqueue_req(Connection(self, self.cfg, client, address, listener.getsockname()))

    def linger(self, sock: socket.socket) -> None:
        """Send the FIN now; close once the client has closed too, or after LINGER_SECONDS.
        Until then the socket counts against worker_connections, so that a flood of clients
        that never close meets gunicorn's limit (accepting pauses), not the process's file
        limit."""
        entry = Lingering(sock, self, time.monotonic() + LINGER_SECONDS)
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            entry.drain(sock)  # a client that read the whole answer has usually closed already
            if entry.closed:
                return
            self.poller.register(sock, selectors.EVENT_READ, entry.drain)
        except (OSError, ValueError, KeyError):
            entry.close()
            return
        self.nr_conns += 1
        entry.counted = True
        self.lingering.append(entry)

    def murder_pending(self):
        """gthread's expiry of idle connections, and of lingering ones past their time."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and (self.lingering[0].closed or self.lingering[0].until <= now):
            self.lingering.popleft().close()


class Lingering:
    """A closing connection: reads (and drops) what the client still sends until it closes."""

    def __init__(self, sock: socket.socket, worker: ThreadWorker, until: float):
        self.sock, self.worker, self.until = sock, worker, until
        self.read = 0
        self.counted = self.closed = False

    def drain(self, _sock) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.read += len(data)
        if not data or self.read >= LINGER_BYTES:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.counted:
            self.worker.nr_conns -= 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.worker.poller.unregister(self.sock)  # KeyError: never registered
        with contextlib.suppress(OSError):
            self.sock.close()
