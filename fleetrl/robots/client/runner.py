"""Many robots in one thread: ``FleetRunner`` keeps a timer heap of control ticks and one epoll selector over
the sockets' ZeroMQ file descriptors, so 100+ simulated robots fit in one process.

Why not ``zmq.Poller``: it checks every registered socket on every call (about 110 us of CPU with 128
sockets here), and a fleet at 10 Hz wakes thousands of times a second; an epoll over the sockets' FDs costs
what is ready. A ZeroMQ FD is edge-triggered: it signals that the socket's state may have changed, and a
send can take that edge for frames that arrived meanwhile; so a socket is drained whenever its FD is ready
and after every tick that may have sent (reading ``EVENTS`` tells whether frames wait).

Why ``gc.freeze()`` when the loop starts: a full garbage collection walks every object of the process and
stops every robot of the thread meanwhile; in a process that also holds a large heap (a Ray driver, torch,
a robot's own stack) that took 200-250 ms, the largest round trips 128 simulated robots saw. The loop
starts with one collection, then freezes what is left: later collections leave it out.
"""

from __future__ import annotations

import gc
import heapq
import selectors
import threading
import time
from collections.abc import Sequence

import zmq

from fleetrl.robots.client.control_loop import RobotClient


class FleetRunner:
    """Drives many ``RobotClient``s from one thread: control ticks on a timer heap, one selector for I/O."""

    def __init__(self, clients: Sequence[RobotClient], freeze_gc: bool = True):
        """``freeze_gc``: ``gc.freeze()`` when ``run`` starts (module doc); a process-wide setting."""
        self.clients, self.freeze_gc = list(clients), freeze_gc
        self._selector = selectors.DefaultSelector()
        for i, c in enumerate(self.clients):
            self._selector.register(c.socket.getsockopt(zmq.FD), selectors.EVENT_READ, i)

    def run(self, duration: float | None = None, stop: threading.Event | None = None) -> None:
        if self.freeze_gc:
            gc.collect()  # garbage frozen now would never be freed
            gc.freeze()
        start = time.monotonic()
        # Spread the first ticks over one period so robots do not all ask at the same instant.
        heap = [(start + i * c.control_dt / max(1, len(self.clients)), i) for i, c in enumerate(self.clients)]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            if (duration is not None and now - start >= duration) or (stop is not None and stop.is_set()):
                return
            for key, _ in self._selector.select(min(max(0.0, heap[0][0] - now), 0.1)):
                self.clients[key.data].on_readable()
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                client = self.clients[i]
                client.tick()
                if client.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    client.on_readable()  # the tick's sends may have taken the FD's edge of waiting frames
                # Keep the rate; if a tick is late by more than one period, skip ahead instead of bursting.
                nxt = due + client.control_dt
                heapq.heappush(heap, (nxt if nxt > now - client.control_dt else now + client.control_dt, i))

    def close(self) -> None:
        self._selector.close()
        for c in self.clients:
            c.close()
