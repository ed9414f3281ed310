"""The wire format of a job in a queue list, and its validation.

A job is one UTF-8 JSON object, pushed with ``LPUSH`` onto its queue's list::

    {"id": "5f0c...", "task": "sleep", "args": [1], "kwargs": {}, "enqueued_at": 1700000000.0}

Only ``task`` is required: ``id`` defaults to a fresh one given by the worker, ``args``
to ``[]``, ``kwargs`` to ``{}``, ``enqueued_at`` to the time the worker took it,
``attempts`` (runs so far, counted by retries and recoveries) to ``0``; ``key``, a
unique-job key (see ``Task.push(key=...)``), to none. ``recorded``, set by
taskq's own producers, says the job's record was stored as it was pushed: a worker
then stores only what a run adds to it (other producers leave it out, and the
worker stores the whole record). Other fields are ignored, so newer producers can
talk to older workers. JSON only, never
pickle: nothing read from Redis can run code, and only registered tasks run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: A payload larger than this is refused at push time and dead-lettered by workers.
MAX_PAYLOAD_BYTES = 1 << 20
_ID_MAX = 128


class BadPayload(ValueError):
    """Something in a queue is not a valid job; the message says exactly what is wrong."""


#: Ids made ahead: 256 from one ``os.urandom`` call, which is a system call however
#: few bytes it reads. ``popleft`` is atomic, so two threads never get the same one; a
#: forked child drops the ids it inherited, which its parent hands out too.
_ids: collections.deque[str] = collections.deque()
os.register_at_fork(after_in_child=_ids.clear)


def new_id() -> str:
    """32 random hex digits (like ``uuid4().hex``, a fraction of the cost)."""
    try:
        return _ids.popleft()
    except IndexError:
        digits = os.urandom(16 * 256).hex()
        _ids.extend(digits[i : i + 32] for i in range(32, len(digits), 32))
        return digits[:32]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# The same JSON with every non-ASCII character escaped, for text UTF-8 cannot carry.
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact, strict JSON (no NaN or Infinity: other languages must read it too),
    always encodable as UTF-8: if a string in ``value`` holds a lone surrogate (which
    UTF-8 cannot carry), the JSON escapes it, and it reads back the same."""
    text = _ENCODER.encode(value)
    if not text.isascii() and not utf8_ok(text):
        return _ASCII_ENCODER.encode(value)
    return text


def utf8_ok(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def utf8_safe(text: str) -> str:
    """``text`` with any lone surrogate in it written as a backslash escape
    (``\\udc80``), so that it can be stored: a message or a traceback."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode()


@dataclass(slots=True)
class Payload:
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    enqueued_at: float = field(default_factory=time.time)
    attempts: int = 0
    key: str | None = None  # a unique-job key, held until the job ends
    recorded: bool = False  # its record was stored as it was pushed (see decode)

    def next_attempt(self) -> Payload:
        """The same job, one more attempt along (a retry, or a recovery after a stall)."""
        return dataclasses.replace(self, attempts=self.attempts + 1)

    def encode(self) -> bytes:
        """The bytes pushed to Redis. Raises TypeError/ValueError for non-JSON arguments."""
        try:
            data = dumps(
                {
                    "id": self.id,
                    "task": self.task,
                    "args": self.args,
                    "kwargs": self.kwargs,
                    "enqueued_at": self.enqueued_at,
                    **({"attempts": self.attempts} if self.attempts else {}),
                    **({"key": self.key} if self.key else {}),
                    **({"recorded": True} if self.recorded else {}),
                }
            ).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise TypeError(
                f"arguments of task {self.task!r} must be JSON-serialisable: {problem}"
            ) from None
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"job for task {self.task!r} is {len(data)} bytes, "
                f"over the {MAX_PAYLOAD_BYTES}-byte limit: store large data elsewhere "
                "and pass a reference"
            )
        return data


def decode(raw: bytes) -> tuple[Payload, bool]:
    """Parse and validate a job taken from a queue.

    Returns the payload and whether the raw form lacked an ``id`` (the worker then
    stores the job again under the id it was given). Raises :class:`BadPayload`.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise BadPayload(f"payload is {len(raw)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"payload is not UTF-8: {exc}") from None
    data = _parse(text)
    # JSON gives exact types (a bool is not an int here), so `type(x) is` checks them.
    if type(data) is not dict:
        raise BadPayload(
            f"payload must be a JSON object with a 'task' field, not {type(data).__name__}"
        )
    task = data.get("task")
    if type(task) is not str or not task:
        raise BadPayload("payload has no 'task' field (a non-empty string)")
    if not task.isascii() and not utf8_ok(task):
        raise BadPayload("'task' holds a lone surrogate, which UTF-8 cannot carry")
    args = data.get("args", [])
    if type(args) is not list:
        raise BadPayload(f"'args' must be a JSON array, not {type(args).__name__}")
    kwargs = data.get("kwargs", {})
    if type(kwargs) is not dict:
        raise BadPayload(f"'kwargs' must be a JSON object, not {type(kwargs).__name__}")
    job_id = data.get("id")
    missing_id = job_id is None
    if missing_id:
        job_id = new_id()
    elif type(job_id) is not str or not job_id or len(job_id) > _ID_MAX:
        raise BadPayload(f"'id' must be a non-empty string of at most {_ID_MAX} characters")
    elif not job_id.isascii() and not utf8_ok(job_id):
        raise BadPayload("'id' holds a lone surrogate, which UTF-8 cannot carry")
    enqueued_at = data.get("enqueued_at", _MISSING)
    if enqueued_at is _MISSING:
        enqueued_at = time.time()
    elif type(enqueued_at) is not float:
        if type(enqueued_at) is not int:
            raise BadPayload("'enqueued_at' must be a number (seconds since the epoch)")
        if not -_MAX_FLOAT <= enqueued_at <= _MAX_FLOAT:  # float() would overflow
            raise BadPayload("'enqueued_at' must be a finite number")
    elif not math.isfinite(enqueued_at):
        raise BadPayload("'enqueued_at' must be a finite number")
    attempts = data.get("attempts", 0)
    if type(attempts) is not int or attempts < 0:
        raise BadPayload("'attempts' must be a whole number, zero or more")
    key = data.get("key")
    if key is not None and (type(key) is not str or not key or len(key) > _ID_MAX):
        raise BadPayload(f"'key' must be a non-empty string of at most {_ID_MAX} characters")
    if key is not None and not key.isascii() and not utf8_ok(key):
        raise BadPayload("'key' holds a lone surrogate, which UTF-8 cannot carry")
    recorded = data.get("recorded") is True and not missing_id
    payload = Payload(task, args, kwargs, job_id, float(enqueued_at), attempts, key, recorded)
    return payload, missing_id


def _parse(text: str) -> Any:
    """The JSON value of ``text``; BadPayload if it is not JSON. A job as taskq writes
    it goes through the decoder's scanner alone; anything else (whitespace around it,
    extra data, an error) through the whole decoder, which accepts or names it."""
    try:
        value, end = _SCAN(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        raise BadPayload(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise BadPayload("payload is nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"
        raise ValueError(f"{shown} is too large for a 64-bit float")
    return value


# Built once: json.loads(text, **options) builds a new decoder on every call. Every
# float goes through _finite_float (1e999 must not become infinity): a call per float
# costs less than the regex search for a huge exponent that used to pick the cases.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# The decoder's scanner (set by JSONDecoder.__init__; typeshed does not declare it).
_SCAN: Callable[[str, int], tuple[Any, int]] = getattr(_DECODER, "scan_once")  # noqa: B009
_MISSING: Any = object()
_MAX_FLOAT = sys.float_info.max


def peek_id(raw: bytes) -> str | None:
    """The job id in a raw payload if there is a readable one, else None."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and job_id and utf8_ok(job_id) else None
