"""First come, first served turns at the one loaded model (asyncio).

The runtime holds one KV cache and one set of bound adapter tensors, so two generations must
never interleave: each request takes its place in line when it arrives (before its uploads are
decoded, so a slow decode cannot be overtaken), waits for its turn, and can tell its user how
many requests are ahead of it.
"""

import asyncio
from contextlib import asynccontextmanager


class QueueFull(Exception):
    def __init__(self, length: int):
        super().__init__(f"{length} requests in line")
        self.length = length


class RequestQueue:
    """A FIFO of requests; the request at its head has the model. At most `limit` requests wait
    or run at once: one more raises QueueFull (the server answers 503, try again later)."""

    def __init__(self, limit: int | None = None):
        self._tickets = []
        self._moved = asyncio.Condition()
        self.limit = limit

    def __len__(self) -> int:
        return len(self._tickets)

    @asynccontextmanager
    async def place(self):
        """A place in line from now until the block exits (also on an error or a cancellation);
        `await place.turn(on_wait)` waits for the head of the line."""
        place = Place(self)
        async with self._moved:
            if self.limit is not None and len(self._tickets) >= self.limit:
                raise QueueFull(len(self._tickets))
            self._tickets.append(place)
        try:
            yield place
        finally:
            async with self._moved:
                self._tickets.remove(place)
                self._moved.notify_all()

    @asynccontextmanager
    async def turn(self, on_wait=None):
        """Take a place and wait for its turn at once (for requests with nothing to prepare)."""
        async with self.place() as place:
            await place.turn(on_wait)
            yield


class Place:
    def __init__(self, queue: RequestQueue):
        self._queue = queue

    async def turn(self, on_wait=None) -> None:
        """Return at the head of the line, calling `await on_wait(ahead)` each time the number of
        requests ahead changes."""
        queue, reported = self._queue, None
        while True:
            async with queue._moved:
                ahead = queue._tickets.index(self)
                if ahead == 0:
                    return
                if ahead == reported or on_wait is None:
                    await queue._moved.wait()
                    continue
            reported = ahead
            await on_wait(ahead)  # outside the lock: a slow client must not hold up the line
