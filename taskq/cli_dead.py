"""``taskq dead``, ``taskq retry``, ``taskq purge``: inspect and repair dead letters."""

from __future__ import annotations

import datetime
import json

import click

from .app import App
from .broker import Broker
from .cli_common import friendly_errors, url_option

queue_option = click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Only this queue (repeatable). Default: every queue.",
)


def _queues(broker: Broker, queues: tuple[str, ...]) -> list[str]:
    return list(queues) or broker.queue_names()


def _when(ts: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, ValueError, OSError):  # no date holds it (written by hand)
        return f"{ts!r} s since the epoch"


@click.command()
@url_option
@queue_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many per queue, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Whole entries, as JSON lines.")
@friendly_errors
def dead(redis_url: str | None, queues: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List dead letters: jobs that failed for good, poison jobs, bad payloads."""
    broker = App(redis_url).broker
    total = 0
    for queue in _queues(broker, queues):
        for entry in broker.dead_letters(queue, limit):
            total += 1
            if as_json:
                click.echo(json.dumps(entry))
                continue
            click.echo(
                f"{entry['id']}  {queue}  {entry.get('task') or '-'}  "
                f"{_when(entry['died_at'])}  attempts={entry.get('attempts', 0)}"
            )
            click.echo(f"    {entry.get('error') or entry.get('reason') or '-'}")
    if not as_json:
        click.echo(f"{total} dead letter(s)", err=True)


@click.command()
@click.argument("ids", nargs=-1)
@url_option
@queue_option
@click.option("--all", "all_", is_flag=True, help="Retry every dead letter (of --queue).")
@friendly_errors
def retry(ids: tuple[str, ...], redis_url: str | None, queues: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back on their queue as fresh jobs (same id, attempts reset)."""
    if bool(ids) == all_:
        raise click.UsageError("give dead-letter IDs or --all")
    broker = App(redis_url).broker
    wanted = set(ids)
    retried, problems = 0, []
    for queue in _queues(broker, queues):
        entries = (
            broker.dead_letters(queue, limit=1_000_000)
            if all_
            else [e for e in (broker.dead_letter(queue, i) for i in sorted(wanted)) if e]
        )
        for entry in entries:
            wanted.discard(entry["id"])
            problem = broker.revive_dead_letter(queue, entry)
            if problem:
                problems.append(problem)
            else:
                retried += 1
                click.echo(entry["id"])
    problems += [f"{i}: no such dead letter" for i in sorted(wanted)]
    for problem in problems:
        click.echo(problem, err=True)
    click.echo(f"retried {retried} job(s)", err=True)
    if problems:
        raise SystemExit(1)


@click.command()
@click.argument("ids", nargs=-1)
@url_option
@queue_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def purge(ids: tuple[str, ...], redis_url: str | None, queues: tuple[str, ...], yes: bool) -> None:
    """Delete dead letters for good: the given IDs, or all of them (of --queue)."""
    broker = App(redis_url).broker
    targets = _queues(broker, queues)
    what = f"{len(ids)} dead letter(s)" if ids else f"every dead letter of {', '.join(targets)}"
    if not yes:
        click.confirm(f"Delete {what}?", abort=True)
    removed = sum(broker.purge_dead(q, list(ids) if ids else None) for q in targets)
    click.echo(f"purged {removed} dead letter(s)", err=True)
    if ids and removed < len(set(ids)):  # as retry: an id asked for was not there
        click.echo(f"{len(set(ids)) - removed} of the ids given were no dead letter", err=True)
        raise SystemExit(1)
