"""The built-in demo tasks: the article's job, which sleeps ``n`` seconds and returns "Done"."""

from __future__ import annotations

import asyncio
import time

from .app import App


def register(app: App) -> None:
    """Register the demo tasks with ``app`` (the worker's default when no --app is given)."""

    @app.task(name="sleep")
    async def sleep(n: float) -> str:
        """Sleep ``n`` seconds without blocking the loop, then return "Done"."""
        await asyncio.sleep(n)
        return "Done"

    @app.task(name="more_work")
    def more_work(n: float) -> str:
        """A blocking ``def`` task: it runs in a thread, so the loop keeps going."""
        time.sleep(n)
        return f"Finished more work {n:g}"
