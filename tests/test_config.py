"""Settings from the environment, their validation, and passwords kept out of logs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Iterator

import pytest

import taskq
from taskq import App
from taskq.config import ENV_VARS, ConfigError, Settings, check_queue_name, mask_url

FULL_ENV = {
    "TASKQ_REDIS_URL": "redis://example:6380/3",
    "TASKQ_QUEUES": "high, low,,default",
    "TASKQ_CONCURRENCY": "4",
    "TASKQ_GRACE": "2.5",
    "TASKQ_RESULT_TTL": "60",
    "TASKQ_HEARTBEAT_TIMEOUT": "30",
    "TASKQ_DEAD_RETENTION": "3600",
}


# -- from_env ----------------------------------------------------------------------------
def test_from_env_reads_every_taskq_variable() -> None:
    s = Settings.from_env(env=FULL_ENV)
    assert s.redis_url == "redis://example:6380/3"
    assert s.queues == ("high", "low", "default")
    assert s.concurrency == 4
    assert s.grace == 2.5
    assert s.result_ttl == 60
    assert s.heartbeat_timeout == 30.0
    assert s.dead_retention == 3600


def test_every_setting_has_a_variable() -> None:
    assert set(ENV_VARS.values()) == set(FULL_ENV)
    assert set(ENV_VARS) == {f.name for f in dataclasses.fields(Settings)}


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env(env={}) == Settings()
    assert Settings() == Settings(
        redis_url="redis://localhost:6379/0", queues=("default",), concurrency=10
    )


def test_empty_variables_are_ignored() -> None:
    env = dict.fromkeys(FULL_ENV, "")
    assert Settings.from_env(env=env) == Settings()


def test_an_explicit_env_is_used_instead_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_CONCURRENCY", "99")
    assert Settings.from_env(env={}).concurrency == 10
    assert Settings.from_env().concurrency == 99


def test_other_variables_are_ignored() -> None:
    s = Settings.from_env(env={"REDIS_URL": "redis://other/0", "TASKQ_NOPE": "1"})
    assert s == Settings()


def test_overrides_win_over_the_environment() -> None:
    s = Settings.from_env(env=FULL_ENV, concurrency=2, redis_url="redis://override/0")
    assert s.concurrency == 2
    assert s.redis_url == "redis://override/0"
    assert s.grace == 2.5  # not overridden: from the environment


def test_none_overrides_are_ignored() -> None:
    s = Settings.from_env(env=FULL_ENV, concurrency=None, redis_url=None)
    assert s.concurrency == 4
    assert s.redis_url == "redis://example:6380/3"


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*concurency"):
        Settings.from_env(env={}, concurency=3)


def test_number_variables_tolerate_surrounding_spaces() -> None:
    assert Settings.from_env(env={"TASKQ_CONCURRENCY": " 3 "}).concurrency == 3


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TASKQ_CONCURRENCY", "ten"),
        ("TASKQ_CONCURRENCY", "2.5"),
        ("TASKQ_GRACE", "soon"),
        ("TASKQ_RESULT_TTL", "1d"),
        ("TASKQ_HEARTBEAT_TIMEOUT", "15s"),
        ("TASKQ_DEAD_RETENTION", "forever"),
    ],
)
def test_a_bad_number_raises_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env={var: value})
    assert var in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKQ_CONCURRENCY": "0"}, "concurrency must be at least 1"),
        ({"TASKQ_CONCURRENCY": "-3"}, "concurrency must be at least 1"),
        ({"TASKQ_GRACE": "-1"}, "grace must be zero or more"),
        ({"TASKQ_RESULT_TTL": "0"}, "result_ttl must be 1 to 3153600000 seconds"),
        # An expiry past Redis's range: every job's outcome write would be refused.
        ({"TASKQ_RESULT_TTL": "10000000000000000000"}, "result_ttl must be 1 to"),
        ({"TASKQ_DEAD_RETENTION": "0"}, "dead_retention must be at least 1"),
        ({"TASKQ_HEARTBEAT_TIMEOUT": "0.1"}, "heartbeat_timeout must be 0.5 to"),
        ({"TASKQ_HEARTBEAT_TIMEOUT": "1e300"}, "heartbeat_timeout must be 0.5 to"),
        ({"TASKQ_QUEUES": ","}, "at least one queue"),
    ],
)
def test_out_of_range_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env=env)


def test_concurrency_below_one_is_refused_directly_too() -> None:
    with pytest.raises(ConfigError, match="not 0"):
        Settings(concurrency=0)
    assert Settings(concurrency=1).concurrency == 1


def test_zero_grace_is_allowed() -> None:
    assert Settings(grace=0).grace == 0


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("var", ["TASKQ_GRACE", "TASKQ_HEARTBEAT_TIMEOUT"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused(var: str, value: str) -> None:
    # NaN passes every `<` range check, so it needs a check of its own.
    with pytest.raises(ConfigError, match="finite"):
        Settings.from_env(env={var: value})


def test_nan_is_refused_for_integer_settings() -> None:
    with pytest.raises(ConfigError, match="TASKQ_RESULT_TTL"):
        Settings.from_env(env={"TASKQ_RESULT_TTL": "nan"})


# -- queue names -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "high-priority", "emails.v2", "A_1", "q" * 100])
def test_plain_queue_names_are_accepted(name: str) -> None:
    assert check_queue_name(name) == name
    assert Settings(queues=(name,)).queues == (name,)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "brace}",
        "{tag}",
        "colon:name",
        "slash/name",
        "star*",
        "q" * 101,
        "ünïcode",
        "tab\t",
    ],
)
def test_invalid_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid queue name"):
        check_queue_name(name)
    with pytest.raises(ConfigError, match="invalid queue name"):
        Settings(queues=("default", name))


def test_a_trailing_newline_is_not_a_valid_queue_name() -> None:
    # A regex ending in `$` with .match() would let this through.
    with pytest.raises(ConfigError, match="invalid queue name"):
        check_queue_name("default\n")


def test_a_queue_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="invalid queue name"):
        check_queue_name(5)  # type: ignore[arg-type]


def test_an_invalid_queue_name_in_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"invalid queue name 'bad\{name\}'"):
        Settings.from_env(env={"TASKQ_QUEUES": "default,bad{name}"})


def test_an_empty_queue_tuple_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one queue"):
        Settings(queues=())


def test_a_single_queue_name_string_is_not_split_into_letters() -> None:
    # A str is iterable: taken as-is it would be the queues 'h', 'i', 'g', 'h'.
    assert Settings(queues="high").queues == ("high",)  # type: ignore[arg-type]
    app = App("redis://example:1/0", queues="high")

    @app.task
    def noop() -> None: ...

    assert noop.queue == "high"


def test_a_list_of_queues_becomes_a_tuple() -> None:
    settings = Settings(queues=["a", "b"])  # type: ignore[arg-type]
    assert settings.queues == ("a", "b")
    hash(settings)  # frozen settings stay hashable


def test_a_queue_named_twice_is_served_once_at_its_first_place() -> None:
    assert Settings(queues=("high", "default", "high", "low")).queues == ("high", "default", "low")


def test_app_options_go_through_settings() -> None:
    app = App("redis://example:1/0", concurrency=3, queues=("jobs",))
    assert app.settings.concurrency == 3
    assert app.settings.redis_url == "redis://example:1/0"

    @app.task
    def noop() -> None: ...

    assert noop.queue == "jobs"
    with pytest.raises(ConfigError, match="concurrency"):
        App("redis://example:1/0", concurrency=0)


def test_replace_ignores_none_and_validates() -> None:
    s = Settings(concurrency=4)
    assert s.replace(concurrency=None, grace=1.0) == Settings(concurrency=4, grace=1.0)
    with pytest.raises(ConfigError, match="invalid queue name"):
        s.replace(queues=("no spaces",))


# -- mask_url ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:secret@h/0", "redis://user:***@h/0"),
        ("rediss://:secret@redis.example.com:6380/2", "rediss://:***@redis.example.com:6380/2"),
        ("rediss://default:secret@h:6380", "rediss://default:***@h:6380"),
        ("unix://:secret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://:p%40ss%3Aw0rd@h/0", "redis://:***@h/0"),
        ("redis://:@h/0", "redis://:***@h/0"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "secret" not in mask_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://h/0",
        "redis://user@h:6379/0",
        "rediss://redis.example.com:6380/0",
        "unix:///run/redis.sock?db=1",
        "memory://demo",
        "redis://h:6379/0?socket_timeout=5",
    ],
)
def test_mask_url_leaves_password_less_urls_alone(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # redis-py takes the password up to the LAST '@'.
        ("redis://:p@ss@h/0", "redis://:***@h/0"),
        # redis-py also reads ?password=...
        ("redis://h:6379/0?password=secret", "redis://h:6379/0?password=***"),
        ("redis://h/0?db=1&Password=secret", "redis://h/0?db=1&Password=***"),
        # URL schemes are case-insensitive.
        ("REDIS://:secret@h/0", "REDIS://:***@h/0"),
        ("redis-cluster://:secret@h:7000/0", "redis-cluster://:***@h:7000/0"),
    ],
)
def test_mask_url_hides_every_spelling_of_a_password(url: str, masked: str) -> None:
    assert "secret" not in mask_url(url)
    assert "ss@" not in mask_url(url)
    assert mask_url(url).lower() == masked.lower()  # the scheme may come back lower-case


def test_mask_url_of_an_unparseable_url_shows_nothing_of_it() -> None:
    assert "secret" not in mask_url("redis://:secret@[::1/0")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://:se/cret@h:1/0", id="slash"),
        pytest.param("redis://:se#cret@h:1/0", id="hash"),
        pytest.param("redis://:se?cret@h:1/0", id="question-mark"),
    ],
)
def test_mask_url_hides_a_password_with_unencoded_delimiters(url: str) -> None:
    assert "cret" not in mask_url(url)


def test_bad_task_declarations_are_refused_at_once() -> None:
    import functools

    app = taskq.App("memory://declarations")

    def f(a: int) -> int:
        return a

    with pytest.raises(ConfigError, match=r"name must be a non-empty string, not 5"):
        app.task(name=5)(f)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match=r"not None: give one with @app.task\(name=...\)"):
        app.task(functools.partial(f, 1))
    for timeout in (0, -1, math.nan, math.inf):
        with pytest.raises(ConfigError, match="timeout must be positive and finite"):
            app.task(timeout=timeout)(f)
    with pytest.raises(ConfigError, match="retries must be a whole number"):
        app.task(retries=1.5)(f)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="max_stalls must be a whole number"):
        app.task(max_stalls=-1)(f)

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    for generator in (gen, agen):
        with pytest.raises(ConfigError, match="a generator function cannot be a task"):
            app.task(generator)
    assert app.tasks == {}
    with pytest.raises(ValueError, match="too large for a time"):
        app.task(f).options(at=10**400)
