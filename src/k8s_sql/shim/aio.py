"""Small asyncio helpers the shim's long-running tasks share."""

from __future__ import annotations

import asyncio


async def cancel_tasks(tasks) -> None:
    """Cancel background ``tasks`` and wait until they are gone (their errors are moot now)."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set. (Not
    asyncio.wait_for: on Python 3.11 it can swallow a cancellation that comes as the event
    is set, and the waiting task never stops.)"""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
        return True
    except TimeoutError:
        return False
