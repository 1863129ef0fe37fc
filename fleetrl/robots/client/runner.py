"""Many robots in one thread: ``FleetRunner`` keeps a timer heap of control ticks and one ``zmq.Poller``
over all sockets, so 100+ simulated robots fit in one process."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence

import zmq

from fleetrl.robots.client.control_loop import RobotClient


class FleetRunner:
    """Drives many ``RobotClient``s from one thread: control ticks on a timer heap, one poller for I/O."""

    def __init__(self, clients: Sequence[RobotClient]):
        self.clients = list(clients)
        self._poller = zmq.Poller()
        self._by_socket = {}
        for c in self.clients:
            self._poller.register(c.socket, zmq.POLLIN)
            self._by_socket[c.socket] = c

    def run(self, duration: float | None = None, stop: threading.Event | None = None) -> None:
        start = time.monotonic()
        # Spread the first ticks over one period so robots do not all ask at the same instant.
        heap = [(start + i * c.control_dt / max(1, len(self.clients)), i) for i, c in enumerate(self.clients)]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            if (duration is not None and now - start >= duration) or (stop is not None and stop.is_set()):
                return
            timeout_ms = max(0.0, (heap[0][0] - now) * 1e3)
            for sock, _ in self._poller.poll(min(timeout_ms, 100.0)):
                self._by_socket[sock].on_readable()
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                client = self.clients[i]
                client.tick()
                # Keep the rate; if a tick is late by more than one period, skip ahead instead of bursting.
                nxt = due + client.control_dt
                heapq.heappush(heap, (nxt if nxt > now - client.control_dt else now + client.control_dt, i))

    def close(self) -> None:
        for c in self.clients:
            c.close()
