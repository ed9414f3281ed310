"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here),
and the commands they run, run for real without Docker."""

from __future__ import annotations

import json
import re
import shlex
import signal
from typing import Any

import click
import pytest
import yaml

from taskq.cli import main
from taskq.config import ENV_VARS

from .proc import ROOT, TaskqProcess

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()


def parse_taskq(args: list[str]) -> click.Context:
    """Parse a taskq command line as the CLI would, without running it."""
    assert args, "empty command"
    command = main.commands.get(args[0])
    assert command is not None, f"not a taskq command: {args[0]!r}"
    return command.make_context(args[0], list(args[1:]))


def seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    assert value, "empty duration"
    assert match, f"unreadable duration {value!r}"
    return int(match[1] or 0) * 60 + float(match[2] or 0)


def known_env_vars() -> set[str]:
    names = set(ENV_VARS.values())
    for command in main.commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                names.add(envvar)
    return names


def dockerfile_instruction(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]
    ]


# -- docker-compose.yml ---------------------------------------------------------------
def test_redis_service_is_official_healthy_and_persistent() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"
    assert volume in COMPOSE["volumes"], "AOF must live on a named volume"


def test_worker_waits_for_redis_drains_on_stop_and_can_scale() -> None:
    worker = SERVICES["worker"]
    assert worker["build"] == "."
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    ctx = parse_taskq(worker["command"])
    assert ctx.command.name == "worker"
    grace = ctx.params["grace"] or 20.0
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) > grace
    # Scalable with --scale: nothing that only one container can have.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_every_compose_command_is_a_real_taskq_command() -> None:
    built = [name for name, svc in SERVICES.items() if svc.get("build")]
    assert set(built) >= {"worker", "demo"}
    for name in built:
        parse_taskq(SERVICES[name]["command"])
    assert parse_taskq(SERVICES["demo"]["command"]).params["wait_"] is True


def test_compose_environment_uses_only_variables_taskq_reads() -> None:
    known = known_env_vars()
    for name, service in SERVICES.items():
        for var in service.get("environment", {}):
            assert var in known, f"{name}: taskq reads no {var}"
        url = service.get("environment", {}).get("TASKQ_REDIS_URL")
        if url:
            assert url.startswith("redis://redis:6379"), "point at the compose redis service"


def test_readme_configuration_table_lists_every_variable_taskq_reads() -> None:
    """A container is configured through the environment: each variable must be
    findable in the README's table, spelled out in full."""
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(TASKQ_[A-Z_]+)`", table))
    assert known_env_vars() - documented == set()


def test_readme_compose_commands_name_real_services() -> None:
    for line in re.findall(r"docker compose run --rm (\S+) (.+)", README):
        service, rest = line
        assert service in SERVICES
        parse_taskq(shlex.split(rest.split("#")[0]))


# -- Dockerfile ------------------------------------------------------------------------
def test_dockerfile_slim_non_root_exec_form_healthcheck_no_secrets() -> None:
    assert re.match(r"python:3\.\d+-slim$", dockerfile_instruction("FROM")[0])
    users = dockerfile_instruction("USER")
    assert users, "must not run as root"
    assert users[-1] not in {"root", "0"}
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT")[0])
    assert entrypoint == ["taskq"], "exec form, so SIGTERM reaches taskq"
    cmd = json.loads(dockerfile_instruction("CMD")[-1])
    assert parse_taskq(cmd).command.name == "worker"
    health = dockerfile_instruction("HEALTHCHECK")[0]
    check = json.loads(health.split("CMD", 1)[1])
    assert check[0] == "taskq"
    assert parse_taskq(check[1:]).command.name == "health"
    assert any("pip install ." in run for run in dockerfile_instruction("RUN"))
    for line in dockerfile_instruction("ENV") + dockerfile_instruction("ARG"):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|TASKQ_REDIS_URL", line, re.I), line


# -- the same commands, run for real --------------------------------------------------
def test_compose_worker_command_and_healthcheck_run(worker_env: dict[str, str]) -> None:
    health = ["health"]
    with TaskqProcess(health, worker_env) as before:
        assert before.wait() == 1, "no worker yet: unhealthy"
    # What the image runs: `taskq worker ...` with the demo tasks.
    with TaskqProcess(SERVICES["worker"]["command"], worker_env) as worker:
        worker.wait_for_line(r"worker \S+ started")
        with TaskqProcess(health, worker_env) as check:
            assert check.wait() == 0, check.log
        demo = SERVICES["demo"]["command"]
        with TaskqProcess(demo, worker_env) as pusher:
            assert pusher.wait(timeout=60) == 0, pusher.log + worker.log
        assert pusher.log.count('done: "Done"') == 9
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


@pytest.mark.parametrize("service", ["worker", "demo"])
def test_compose_commands_parse_with_environment(service: str) -> None:
    ctx = parse_taskq(SERVICES[service]["command"])
    assert ctx.command.name in {"worker", "push"}
