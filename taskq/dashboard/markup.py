"""HTML building blocks. Every value from Redis goes through :func:`e` (or a helper
that calls it): job arguments, errors, tracebacks, ids and queue names are user data.
"""

from __future__ import annotations

import datetime
import html
import json
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote


def e(value: object) -> str:
    """``value`` as text, escaped for HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def pretty(value: Any) -> str:
    """Indented JSON of ``value`` in a <pre> (escaped)."""
    return f"<pre>{e(json.dumps(value, indent=2, ensure_ascii=False, default=str))}</pre>"


def iso(ts: float) -> str:
    """The UTC time; a time a date cannot hold (past the year 9999, say: written by
    hand) as its number of seconds since the epoch."""
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{ts!r} s since the epoch"


def duration(seconds: float) -> str:
    seconds = abs(seconds)
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def when(ts: float | None, now: float) -> str:
    """``3.1s ago`` / ``in 5.0s``, with the UTC time as a tooltip."""
    if ts is None:
        return '<span class="muted">-</span>'
    ago = now - ts
    label = f"{duration(ago)} ago" if ago >= 0 else f"in {duration(ago)}"
    stamp = e(iso(ts))
    return f'<time datetime="{stamp}" title="{stamp}">{e(label)}</time>'


def job_href(job_id: str) -> str:
    """The job's page, relative to the dashboard's root (the page's <base>)."""
    return "jobs/" + quote(job_id, safe="")


def job_link(job_id: str | None) -> str:
    if not job_id:
        return '<span class="muted">(no id)</span>'
    return f'<a class="id" href="{e(job_href(job_id))}">{e(job_id)}</a>'


def call(task: str | None, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """``task(args..., k=v)``, shortened, escaped."""
    parts = [json.dumps(a, ensure_ascii=False, default=str) for a in args]
    parts += [f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in kwargs.items()]
    inner = ", ".join(parts)
    if len(inner) > 80:
        inner = inner[:79] + "…"
    return f"<code><b>{e(task or '?')}</b>({e(inner)})</code>"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """A table whose cells are HTML already built with the helpers above."""
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def button(action: str, label: str, queue: str, dead_id: str | None = None, ask: str = "") -> str:
    """An action button; dashboard.js posts its data to ``/api/dead/<action>``."""
    data = f' data-action="{e(action)}" data-queue="{e(queue)}"'
    if dead_id is not None:
        data += f' data-id="{e(dead_id)}"'
    if ask:
        data += f' data-confirm="{e(ask)}"'
    return f'<button type="button" class="{e(action)}"{data}>{e(label)}</button>'


def page(
    title: str, main: str, *, actions: bool, refresh: float, redis: str, base: str = "/"
) -> str:
    """The whole document; ``main`` is what dashboard.js swaps on each refresh. Its
    links are relative to ``base``, the dashboard's root URL path: served under a
    sub-path (``--root-path``), they still lead home."""
    token = (
        '<label class="token">token <input id="token" type="password" autocomplete="off" '
        'placeholder="needed to retry or purge"></label>'
        if actions
        else '<span class="muted">read-only (start with --token to retry or purge)</span>'
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<base href="{e(base)}">
<link rel="stylesheet" href="static/dashboard.css">
<script src="static/dashboard.js" defer></script>
</head>
<body data-refresh-ms="{int(refresh * 1000)}">
<header>
<a class="brand" href="./">taskq</a>
<span class="muted">{e(redis)}</span>
<form class="lookup" action="jobs" method="get">
<input name="id" placeholder="job id" aria-label="job id" required>
<button type="submit">Show job</button>
</form>
{token}
<span id="message" role="status"></span>
<span id="status"></span>
</header>
<main id="content">
{main}
</main>
</body>
</html>
"""
