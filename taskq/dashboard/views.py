"""The dashboard's pages, as HTML fragments built from :mod:`.state`'s dicts."""

from __future__ import annotations

import hashlib
from typing import Any

from .markup import button, call, duration, e, job_link, pretty, table, when

COUNTS = ("queued", "in_progress", "delayed", "dead", "done", "failed", "retried")


def _rate(value: float | None) -> str:
    return '<span class="muted">-</span>' if value is None else f"{value:.2f}/s"


def _num(name: str, value: int) -> str:
    cls = " alert" if name == "dead" and value else ""
    return f'<span class="num{cls}" data-count="{e(name)}">{value}</span>'


def queues(state: dict[str, Any]) -> str:
    rows = [
        [
            f'<b class="queue">{e(q["queue"])}</b>',
            *(_num(c, int(q[c])) for c in COUNTS),
            _rate(q.get("done_rate")),
            _rate(q.get("failed_rate")),
            str(len(q["workers"])),
        ]
        for q in state["queues"]
    ]
    headers = ["queue", *(c.replace("_", " ") for c in COUNTS), "done/s", "failed/s", "workers"]
    return "<h2>Queues</h2>" + table(headers, rows, "No queues yet: nothing was ever pushed.")


def waiting(state: dict[str, Any]) -> str:
    rows = [
        [e(q["queue"]), job_link(j["id"]), _call(j), when(j["enqueued_at"], state["time"])]
        for q in state["queues"]
        for j in q["waiting"]
    ]
    return "<h2>Next up</h2>" + table(
        ["queue", "job", "call", "enqueued"], rows, "No job is waiting."
    )


def _call(job: dict[str, Any]) -> str:
    if job.get("bad"):
        return f'<span class="error">unreadable: {e(job["bad"])}</span>'
    return call(job["task"], job["args"], job["kwargs"])


def workers(state: dict[str, Any]) -> str:
    rows = []
    for w in state["workers"]:
        running = "".join(f"<div>{job_link(j['id'])} {_call(j)}</div>" for j in w["running"]) or (
            '<span class="muted">idle</span>'
        )
        started = float(w["started_at"]) if w.get("started_at") else None
        rows.append(
            [
                f'<span class="id">{e(w["id"])}</span>',
                e(w.get("host", "")),
                e(w.get("pid", "")),
                e(w.get("queues", "")),
                f'<span data-count="running">{len(w["running"])}</span>'
                f" / {e(w.get('concurrency', '?'))}",
                e(duration(float(w["heartbeat_age"])) + " ago"),
                when(started, state["time"]),
                running,
            ]
        )
    headers = ["worker", "host", "pid", "queues", "running", "heartbeat", "up since", "jobs"]
    return "<h2>Workers</h2>" + table(headers, rows, "No live worker.")


def delayed(state: dict[str, Any]) -> str:
    rows = [
        [
            e(d["queue"]),
            job_link(d["id"]),
            _call(d),
            str(d["attempts"]),
            when(float(d["due"]), state["time"]),
        ]
        for d in state["delayed"]
    ]
    return "<h2>Delayed</h2>" + table(
        ["queue", "job", "call", "attempts", "due"], rows, "No delayed job or retry."
    )


def _dom_id(*parts: str) -> str:
    return "d" + hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def dead_letter_details(d: dict[str, Any]) -> str:
    """Reason, error, traceback and payload of a dead letter, folded."""
    parts = [f"<p><b>reason:</b> {e(d.get('reason') or '-')}</p>"]
    if d.get("traceback"):
        parts.append(f'<pre class="traceback">{e(d["traceback"])}</pre>')
    payload = d.get("payload") or d.get("payload_base64") or ""
    parts.append(f'<p><b>payload:</b></p><pre class="payload">{e(payload)}</pre>')
    dom_id = _dom_id(str(d["queue"]), str(d["id"]))
    return f'<details id="{dom_id}"><summary>details</summary>{"".join(parts)}</details>'


def dead(state: dict[str, Any], actions: bool) -> str:
    rows = []
    for d in state["dead"]:
        queue, dead_id = str(d["queue"]), str(d["id"])
        row = [
            e(queue),
            job_link(dead_id),
            f"<code>{e(d.get('task') or '?')}</code>",
            str(d.get("attempts", 0)),
            when(float(d["died_at"]), state["time"]),
            f'<span class="error">{e(d.get("error") or d.get("reason") or "")}</span>'
            + dead_letter_details(d),
        ]
        if actions:
            row.append(
                button("retry", "Retry", queue, dead_id)
                + button("purge", "Purge", queue, dead_id, ask=f"Delete dead letter {dead_id}?")
            )
        rows.append(row)
    headers = ["queue", "job", "task", "attempts", "died", "error"] + ([""] if actions else [])
    purge_all = ""
    if actions:
        purge_all = "".join(
            button(
                "purge",
                f"Purge all of {q['queue']}",
                str(q["queue"]),
                None,
                ask=f"Delete every dead letter of queue {q['queue']}?",
            )
            for q in state["queues"]
            if q["dead"]
        )
    return (
        '<h2>Dead letters</h2><div class="bulk">'
        + purge_all
        + "</div>"
        + table(headers, rows, "No dead letter.")
    )


def overview(state: dict[str, Any], actions: bool) -> str:
    return "\n".join(
        [queues(state), workers(state), waiting(state), delayed(state), dead(state, actions)]
    )


def job(record: dict[str, Any], now: float, actions: bool) -> str:
    """A job's whole record: call, attempts, timings, result or error and traceback."""
    status = str(record.get("status", "unknown"))
    rows: list[tuple[str, str]] = [
        ("status", f'<span class="status status-{e(status)}" id="job-status">{e(status)}</span>'),
        ("task", f"<code>{e(record.get('task') or '?')}</code>"),
        ("queue", e(record.get("queue", ""))),
        ("attempts", e(record.get("attempts", 0))),
        ("stalls", e(record.get("stalls", 0))),
        ("worker", e(record.get("worker") or "-")),
    ]
    started, finished = record.get("started_at"), record.get("finished_at")
    enqueued = record.get("enqueued_at")
    for name in ("enqueued_at", "started_at", "finished_at"):
        value = record.get(name)
        rows.append((name.replace("_", " "), when(float(value) if value else None, now)))
    if started and enqueued:
        rows.append(("waited", e(duration(float(started) - float(enqueued)))))
    if started and finished:
        rows.append(("ran for", e(duration(float(finished) - float(started)))))
    facts = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    parts = [
        f'<h2>Job <span class="id">{e(record["id"])}</span></h2>',
        f'<table class="facts">{facts}</table>',
        "<h3>Arguments</h3>",
        pretty(record.get("args", [])),
        "<h3>Keyword arguments</h3>",
        pretty(record.get("kwargs", {})),
    ]
    if record.get("unreadable"):
        parts.append(f'<p class="error">unreadable record: {e(record["unreadable"])}</p>')
    if status == "done":
        parts += ["<h3>Result</h3>", f'<div id="job-result">{pretty(record.get("result"))}</div>']
    if record.get("error"):
        parts += ["<h3>Error</h3>", f'<p class="error">{e(record["error"])}</p>']
    if record.get("traceback"):
        parts += ["<h3>Traceback</h3>", f'<pre class="traceback">{e(record["traceback"])}</pre>']
    letter = record.get("dead_letter")
    if letter:
        queue = str(record.get("queue", ""))
        parts.append(f"<h3>Dead letter</h3><p>reason: {e(letter.get('reason') or '-')}</p>")
        if actions:
            parts.append(button("retry", "Retry", queue, str(letter["id"])))
    return "\n".join(parts)


def not_found(job_id: str) -> str:
    return (
        f'<h2>No job <span class="id">{e(job_id)}</span></h2>'
        "<p>It was never pushed, or its record expired (records are kept "
        "<code>TASKQ_RESULT_TTL</code> seconds after the job ends).</p>"
    )


def unreachable(message: str) -> str:
    return f'<h2>Redis is unreachable</h2><p class="error">{e(message)}</p>'
