"""Linearizable reads on a PostgreSQL primary with synchronous standbys (HA).

A primary cut off from the rest keeps answering reads after a standby elsewhere has been
promoted and has taken writes: those reads would be stale, which etcd's linearizable reads
never are. etcd confirms its leadership for a read (ReadIndex, or a leader lease); here the
confirmation is a synchronous commit: every ``interval`` seconds a transaction that only
takes a transaction ID (``SELECT txid_current()``) commits, which needs a synchronous
standby's acknowledgement. A read is answered only while a commit *started* within the last
``lease`` seconds has been acknowledged. A cut-off primary cannot have one acknowledged, so
it stops answering within ``lease`` seconds of the cut — long before pg_auto_failover
promotes a standby (its timeouts add up to 20 s and more, README "HA").

Without synchronous standbys (``synchronous_standby_names`` empty: a single PostgreSQL, or
a formation down to one node) there is no other primary to be stale against, and reads are
not held back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from k8s_sql.shim.storage import queries
from k8s_sql.shim.storage.base import UnavailableError

log = logging.getLogger("k8s_sql.shim")


class ReadLease:
    """The confirmation linearizable reads wait for (see the module doc). ``interval`` and
    ``lease`` in seconds; ``lease`` must stay well below the time a failover takes."""

    def __init__(self, pool, interval: float = 1.0, lease: float = 5.0):
        self.pool, self.interval, self.lease = pool, interval, lease
        self.confirmed = time.monotonic()  # when the last acknowledged confirmation started
        self.required = False

    async def confirm(self) -> None:
        """One round: read ``synchronous_standby_names``; with standbys, commit a
        transaction ID. Updates :attr:`confirmed` on success; errors leave it as it is."""
        start = time.monotonic()
        try:
            async with self.pool.connection(timeout=self.lease) as conn:
                names = (await (await conn.execute(queries.SYNCHRONOUS_STANDBYS)).fetchone())[0]
                self.required = bool(names.strip())
                if self.required:
                    await asyncio.wait_for(conn.execute(queries.CONFIRM_COMMIT), self.lease)
        except Exception as e:  # noqa: BLE001 - any failure means: not confirmed this round
            log.debug("read lease not confirmed: %s", e)
            return
        self.confirmed = max(self.confirmed, start)

    async def run(self) -> None:
        """Confirm every ``interval`` seconds until cancelled."""
        while True:
            await self.confirm()
            await asyncio.sleep(self.interval)

    def check(self) -> None:
        """Raise UnavailableError when reads must wait: standbys are configured and no
        confirmation that started within ``lease`` seconds has been acknowledged."""
        age = time.monotonic() - self.confirmed
        if self.required and age > self.lease:
            raise UnavailableError(f"datastore unavailable: the primary has not confirmed a synchronous commit for "
                                   f"{age:.0f} s (cut off from its standbys, or a failover under way)")
