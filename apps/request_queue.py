"""First come, first served turns at the one loaded model (asyncio).

The runtime holds one KV cache and one set of bound adapter tensors, so two generations must
never interleave: each request waits in line, and a waiting request can tell its user how many
requests are ahead of it.
"""

import asyncio
from contextlib import asynccontextmanager


class RequestQueue:
    """A FIFO of requests; the request at its head has the model."""

    def __init__(self):
        self._tickets = []
        self._moved = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._tickets)

    @asynccontextmanager
    async def turn(self, on_wait=None):
        """Wait for this request's turn, calling `await on_wait(ahead)` each time the number of
        requests ahead of it changes; the turn ends when the block exits (also on cancellation)."""
        ticket = object()
        async with self._moved:
            self._tickets.append(ticket)
        try:
            reported = None
            while True:
                async with self._moved:
                    ahead = self._tickets.index(ticket)
                    if ahead == 0:
                        break
                    if ahead == reported or on_wait is None:
                        await self._moved.wait()
                        continue
                reported = ahead
                await on_wait(ahead)  # outside the lock: a slow client must not hold up the line
            yield
        finally:
            async with self._moved:
                self._tickets.remove(ticket)
                self._moved.notify_all()
