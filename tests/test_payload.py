"""The wire format: decode() refuses every malformed job with a message saying what is wrong."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from taskq.payload import MAX_PAYLOAD_BYTES, BadPayload, Payload, decode, new_id, peek_id


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- decode: the happy paths -------------------------------------------------------------
def test_a_full_payload_round_trips() -> None:
    payload = Payload("add", [1, "two", [3.5]], {"k": {"nested": None}}, "job-1", 1700000000.25)
    decoded, missing_id = decode(payload.encode())
    assert decoded == payload
    assert missing_id is False


def test_recorded_is_kept_only_as_true_and_with_an_id() -> None:
    # A job whose record its producer stored (taskq's push) says so; anything else
    # gets its whole record stored by the worker.
    payload = Payload("add", [1], recorded=True)
    assert json.loads(payload.encode())["recorded"] is True
    assert decode(payload.encode())[0] == payload
    assert "recorded" not in json.loads(Payload("add").encode())
    for value in (1, "true", None):
        assert not decode(raw({"id": "j", "task": "x", "recorded": value}))[0].recorded
    # Without an id, the worker gives it one: no record can be under that id yet.
    assert not decode(raw({"task": "x", "recorded": True}))[0].recorded


def test_a_minimal_payload_gets_defaults_and_a_fresh_id() -> None:
    before = time.time()
    payload, missing_id = decode(b'{"task":"x"}')
    after = time.time()
    assert missing_id is True
    assert payload.task == "x"
    assert payload.args == []
    assert payload.kwargs == {}
    assert len(payload.id) == 32
    int(payload.id, 16)  # hex
    assert before <= payload.enqueued_at <= after


def test_each_missing_id_gets_a_different_id() -> None:
    first, _ = decode(b'{"task":"x"}')
    second, _ = decode(b'{"task":"x"}')
    assert first.id != second.id


def test_ids_made_at_once_by_many_threads_are_all_different() -> None:
    # Ids are made 256 at a time: threads taking them and refilling together must
    # neither share one nor lose any.
    barrier = threading.Barrier(8)

    def take() -> list[str]:
        barrier.wait()
        return [new_id() for _ in range(2000)]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for batch in pool.map(lambda _: take(), range(8)) for i in batch]
    assert len(set(ids)) == len(ids) == 16_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_null_id_counts_as_missing() -> None:
    payload, missing_id = decode(b'{"task":"x","id":null}')
    assert missing_id is True
    assert payload.id


def test_unknown_fields_are_ignored() -> None:
    payload, missing_id = decode(b'{"task":"x","id":"a","priority":5,"meta":{"from":"go"}}')
    assert (payload.task, payload.id, missing_id) == ("x", "a", False)


def test_integer_enqueued_at_becomes_a_float() -> None:
    payload, _ = decode(b'{"task":"x","enqueued_at":1700000000}')
    assert payload.enqueued_at == 1700000000.0
    assert isinstance(payload.enqueued_at, float)


def test_non_ascii_text_is_fine() -> None:
    payload, _ = decode(json.dumps({"task": "x", "args": ["héllo ✓"]}, ensure_ascii=False).encode())
    assert payload.args == ["héllo ✓"]


def test_an_id_of_the_maximum_length_is_accepted() -> None:
    payload, _ = decode(raw({"task": "x", "id": "a" * 128}))
    assert payload.id == "a" * 128


# -- decode: every kind of bad input -----------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
        pytest.param(b'{"task":"\xe9"}', "not UTF-8", id="latin1-inside-json"),
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"{task: x}", "not JSON", id="not-json"),
        pytest.param(b'{"task":"x"', "not JSON", id="truncated"),
        pytest.param(b'{"task":"x"} {}', "not JSON", id="extra-data"),
        pytest.param(b'[{"task":"x"}]', "must be a JSON object", id="array"),
        pytest.param(b"42", "must be a JSON object", id="number"),
        pytest.param(b'"x"', "must be a JSON object", id="string"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(b"{}", "no 'task' field", id="missing-task"),
        pytest.param(b'{"task":""}', "no 'task' field", id="empty-task"),
        pytest.param(b'{"task":7}', "no 'task' field", id="number-task"),
        pytest.param(b'{"task":null}', "no 'task' field", id="null-task"),
        pytest.param(b'{"task":["x"]}', "no 'task' field", id="array-task"),
        pytest.param(b'{"task":"x","args":{}}', "'args' must be a JSON array", id="args-object"),
        pytest.param(b'{"task":"x","args":"ab"}', "'args' must be a JSON array", id="args-string"),
        pytest.param(b'{"task":"x","args":null}', "'args' must be a JSON array", id="args-null"),
        pytest.param(b'{"task":"x","args":1}', "'args' must be a JSON array", id="args-number"),
        pytest.param(b'{"task":"x","kwargs":[]}', "'kwargs' must be a JSON object", id="kw-array"),
        pytest.param(b'{"task":"x","kwargs":"a"}', "'kwargs' must be a JSON object", id="kw-str"),
        pytest.param(b'{"task":"x","kwargs":null}', "'kwargs' must be a JSON object", id="kw-null"),
        pytest.param(b'{"task":"x","id":5}', "'id' must be a non-empty string", id="id-number"),
        pytest.param(b'{"task":"x","id":""}', "'id' must be a non-empty string", id="id-empty"),
        pytest.param(b'{"task":"x","id":true}', "'id' must be a non-empty string", id="id-bool"),
        pytest.param(b'{"task":"x","id":["a"]}', "'id' must be a non-empty string", id="id-list"),
        pytest.param(b'{"task":"x","id":{}}', "'id' must be a non-empty string", id="id-object"),
        pytest.param(
            raw({"task": "x", "id": "a" * 129}), "at most 128 characters", id="id-too-long"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":"1700000000"}', "'enqueued_at' must be a number", id="t-str"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":true}', "'enqueued_at' must be a number", id="t-bool"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":false}', "'enqueued_at' must be a number", id="t-false"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":null}', "'enqueued_at' must be a number", id="t-null"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":[1]}', "'enqueued_at' must be a number", id="t-list"
        ),
        pytest.param(
            b'{"task":"x","enqueued_at":1' + b"0" * 400 + b"}",
            "'enqueued_at' must be a finite number",
            id="t-huge-int",
        ),
        pytest.param(
            b'{"task":"x","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested too deeply",
            id="nested-too-deeply",
        ),
    ],
)
def test_bad_payloads_are_refused_with_a_message_naming_the_problem(
    data: bytes, message: str
) -> None:
    with pytest.raises(BadPayload) as info:
        decode(data)
    assert message in str(info.value)


def test_whitespace_around_a_payload_is_fine() -> None:
    payload, _ = decode(b' \n{"task": "x", "args": [1.5]}\r\n ')
    assert (payload.task, payload.args) == ("x", [1.5])


def test_bad_payload_is_a_value_error() -> None:
    assert issubclass(BadPayload, ValueError)


def test_a_payload_over_the_limit_is_refused_before_parsing() -> None:
    # Not even JSON: the size check must come first, so nothing huge is parsed.
    data = b"x" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(BadPayload, match=r"over the 1048576-byte limit") as info:
        decode(data)
    assert str(MAX_PAYLOAD_BYTES + 1) in str(info.value)


def test_a_payload_exactly_at_the_limit_is_accepted() -> None:
    empty = len(Payload("x", [""], {}, "id", 1.0).encode())
    payload = Payload("x", ["a" * (MAX_PAYLOAD_BYTES - empty)], {}, "id", 1.0)
    data = payload.encode()
    assert len(data) == MAX_PAYLOAD_BYTES
    assert decode(data)[0] == payload


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # json.loads accepts these by default; taskq writes strict JSON only, and a job
        # with NaN in its arguments could never have its record written (a poison job).
        pytest.param(b'{"task":"x","args":[NaN]}', "not JSON", id="nan-arg"),
        pytest.param(b'{"task":"x","kwargs":{"a":-Infinity}}', "not JSON", id="inf-kwarg"),
        pytest.param(b'{"task":"x","enqueued_at":NaN}', "not JSON", id="nan-enqueued-at"),
        pytest.param(b'{"task":"x","enqueued_at":Infinity}', "not JSON", id="inf-enqueued-at"),
        pytest.param(
            b'{"task":"x","enqueued_at":1e999}',
            "1e999 is too large for a 64-bit float",
            id="overflow-enqueued-at",
        ),
        pytest.param(
            b'{"task":"x","args":[1e999]}',
            "1e999 is too large for a 64-bit float",
            id="overflow-arg",
        ),
        pytest.param(  # no exponent at all; the message shows the number cut short
            b'{"task":"x","args":[1' + b"0" * 400 + b".5]}",
            r"not JSON: 10{19}\.\.\.0{8}\.5 \(403 characters\) is too large for",
            id="overflow-long-number",
        ),
    ],
)
def test_non_standard_json_numbers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadPayload, match=message):
        decode(data)


# -- attempts ----------------------------------------------------------------------------
def test_attempts_default_to_zero_and_are_left_out_of_a_first_attempt() -> None:
    payload = Payload("x", id="a", enqueued_at=1.0)
    assert payload.attempts == 0
    assert b"attempts" not in payload.encode()
    assert decode(b'{"task":"x"}')[0].attempts == 0


def test_next_attempt_keeps_the_job_and_counts_up() -> None:
    first = Payload("x", [1], {"k": 2}, "a", 1.0)
    third = first.next_attempt().next_attempt()
    assert third.attempts == 2
    assert (third.task, third.args, third.kwargs, third.id, third.enqueued_at) == (
        "x",
        [1],
        {"k": 2},
        "a",
        1.0,
    )
    assert first.attempts == 0  # frozen: a new payload each time
    assert json.loads(third.encode())["attempts"] == 2
    assert decode(third.encode()) == (third, False)


@pytest.mark.parametrize("value", ["true", "-1", "1.5", '"1"', "null", "[1]"])
def test_bad_attempts_are_refused(value: str) -> None:
    with pytest.raises(BadPayload, match="'attempts' must be a whole number"):
        decode(f'{{"task":"x","attempts":{value}}}'.encode())


# -- encode ------------------------------------------------------------------------------
def test_encode_is_compact_utf8_json_with_every_field() -> None:
    data = Payload("greet", ["é"], {"n": 1}, "abc", 2.5).encode()
    assert (
        data
        == '{"id":"abc","task":"greet","args":["é"],"kwargs":{"n":1},"enqueued_at":2.5}'.encode()
    )


def test_payload_defaults_give_fresh_ids_and_the_current_time() -> None:
    before = time.time()
    first, second = Payload("x"), Payload("x")
    assert first.id != second.id
    assert before <= first.enqueued_at <= time.time()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param([object()], {}, id="object-arg"),
        pytest.param([], {"when": time}, id="module-kwarg"),
        pytest.param([{1, 2}], {}, id="set-arg"),
        pytest.param([b"bytes"], {}, id="bytes-arg"),
        pytest.param([{(1, 2): "tuple key"}], {}, id="tuple-key"),
    ],
)
def test_encode_refuses_non_json_arguments_naming_the_task(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError, match=r"arguments of task 'resize' must be JSON-serialisable"):
        Payload("resize", args, kwargs).encode()


def test_encode_refuses_a_circular_structure() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="'resize'"):
        Payload("resize", [loop]).encode()


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_encode_refuses_nan_and_infinity(number: float) -> None:
    with pytest.raises(TypeError, match="'resize'"):
        Payload("resize", [number]).encode()
    with pytest.raises(TypeError, match="'resize'"):
        Payload("resize", [], {"x": [number]}).encode()


def test_encode_refuses_a_payload_over_the_limit() -> None:
    payload = Payload("upload", ["a" * MAX_PAYLOAD_BYTES])
    with pytest.raises(ValueError, match=r"'upload' is \d+ bytes, over the 1048576-byte limit"):
        payload.encode()


def test_the_limit_counts_bytes_not_characters() -> None:
    # 600k two-byte characters: under the limit in characters, over it in bytes.
    payload = Payload("upload", ["é" * 600_000])
    with pytest.raises(ValueError, match="over the"):
        payload.encode()


# -- peek_id -----------------------------------------------------------------------------
def test_peek_id_reads_the_id_of_a_valid_payload() -> None:
    assert peek_id(Payload("x", id="abc").encode()) == "abc"


def test_peek_id_reads_the_id_even_when_the_rest_is_invalid() -> None:
    # Dead letters keep the id of a job whose other fields are bad.
    assert peek_id(b'{"id":"abc","args":5}') == "abc"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'["abc"]', id="array"),
        pytest.param(b'"abc"', id="string"),
        pytest.param(b'{"task":"x"}', id="no-id"),
        pytest.param(b'{"id":""}', id="empty-id"),
        pytest.param(b'{"id":5}', id="number-id"),
        pytest.param(b'{"id":null}', id="null-id"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deeply"),
    ],
)
def test_peek_id_is_none_without_a_readable_id(data: bytes) -> None:
    assert peek_id(data) is None
