"""`taskq dashboard` end to end: a real dashboard process on the private Redis,
plain HTTP for the API, and Debian's chromium driven by Playwright for the page.

The browser tests need /usr/bin/chromium (``apt-get install chromium``; Playwright's
own browser download does not work here) and the ``playwright`` package. Without
them they skip, except under CI (``CI`` set), where they fail: CI installs both.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from click.testing import CliRunner

import taskq
from taskq import App
from taskq.cli import main
from taskq.keys import Keys

from . import tasks
from .helpers import wait_event, worker_thread
from .proc import TaskqProcess
from .redis_server import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

TOKEN = "s3cret-dashboard-token"
KEYS = Keys()
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# -- a dashboard process, and HTTP ---------------------------------------------------------
@contextmanager
def serve(env: dict[str, str], *args: str) -> Iterator[str]:
    """`taskq dashboard` on a free port, refreshing fast; yields its base URL."""
    env = {k: v for k, v in env.items() if k != "TASKQ_DASHBOARD_TOKEN"}
    port = free_port()
    with TaskqProcess(["dashboard", "--port", str(port), "--refresh", "0.3", *args], env) as proc:
        proc.wait_for_line(r"Uvicorn running on")
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def dashboard(worker_env: dict[str, str]) -> Iterator[str]:
    with serve(worker_env, "--token", TOKEN) as url:
        yield url


@pytest.fixture
def readonly_dashboard(worker_env: dict[str, str]) -> Iterator[str]:
    with serve(worker_env) as url:
        yield url


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Taskq-Token"] = token
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def dead_letter_of_boom(app: App, message: str = "kaput") -> taskq.Job[None]:
    """A job that fails for good (boom has no retries), so it is dead-lettered."""
    job = tasks.boom.push(message)
    taskq.Worker(app, burst=True, handle_signals=False).run()
    assert job.status() == "failed"
    return job


# -- the browser ---------------------------------------------------------------------------
def _no_browser() -> str:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} missing: apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright missing: pip install -e '.[dev]'"
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread
    until it stops, and asyncio.run() in later test modules would refuse to start."""
    missing = _no_browser()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; any script error or console error (a CSP refusal, say) fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    yield page
    context.close()
    assert not problems


def count(page: Page, name: str) -> str:
    return page.locator(f'[data-count="{name}"]').first.inner_text()


# -- the API -------------------------------------------------------------------------------
def test_state_endpoint_gives_the_queue_counts(app: App, dashboard: str) -> None:
    dead_letter_of_boom(app)
    jobs = tasks.add.push_many([(1, 2), (3, 4), (5, 6)])
    tasks.add.options(delay=300).push(7, 8)
    status, body = get(dashboard + "/api/state")
    assert status == 200
    state = json.loads(body)
    (queue,) = state["queues"]
    assert {k: queue[k] for k in ("queue", "queued", "delayed", "dead", "failed")} == {
        "queue": "default",
        "queued": 3,
        "delayed": 1,
        "dead": 1,
        "failed": 1,
    }
    assert [j["id"] for j in queue["waiting"]] == [j.id for j in jobs]  # next first
    assert [d["task"] for d in state["delayed"]] == ["add"]
    assert [d["task"] for d in state["dead"]] == ["boom"]
    assert state["read_only"] is False
    status, body = get(f"{dashboard}/api/jobs/{jobs[0].id}")
    assert (status, json.loads(body)["args"]) == (200, [1, 2])


def test_a_time_no_date_holds_is_shown_not_a_server_error(
    app: App, dashboard: str, r: redis.Redis
) -> None:
    # Written by hand (or by another producer): due, enqueued 1e20 s after the epoch.
    tasks.add.push(1, 1)  # the queue is listed
    payload = {"id": "far", "task": "add", "args": [1, 2], "enqueued_at": 1e20}
    r.zadd("taskq:{default}:delayed", {json.dumps(payload): 1e20})
    r.hset("taskq:job:far", mapping={"status": "scheduled", "enqueued_at": "1e20"})
    for page in ("/", "/jobs/far"):
        status, body = get(dashboard + page)
        assert status == 200, body
        assert "1e+20 s since the epoch" in body
    with pytest.raises(ValueError, match="at most 100 years ahead"):
        tasks.add.push(1, 2, delay=200 * 365 * 86_400)


def test_changes_need_the_right_token(app: App, dashboard: str, r: redis.Redis) -> None:
    job = dead_letter_of_boom(app)
    for token in (None, "", "wrong", TOKEN + "x"):
        for action in ("retry", "purge"):
            status, reply = post(f"{dashboard}/api/dead/{action}", {"queue": "default"}, token)
            assert (status, reply["ok"]) == (403, False), (action, token)
    assert r.zcard(KEYS.dead("default")) == 1
    status, reply = post(dashboard + "/api/dead/retry", {"queue": "default", "id": job.id}, TOKEN)
    assert (status, reply["ok"]) == (200, True), reply
    assert job.status() == "queued"


def test_retrying_a_dead_letter_with_no_readable_job_says_so(
    app: App, dashboard: str, r: redis.Redis
) -> None:
    # The same check as `taskq retry`: an unreadable payload_base64 was a 500 here.
    tasks.add.push(1, 1)  # the queue is listed
    r.hset("taskq:{default}:dead:data", "odd", '{"payload_base64": 5}')
    r.zadd("taskq:{default}:dead", {"odd": 1.0})
    status, reply = post(dashboard + "/api/dead/retry", {"queue": "default", "id": "odd"}, TOKEN)
    assert (status, reply["ok"]) == (409, False)
    assert reply["message"] == "odd: the dead letter holds no readable job; purge it instead"


def test_a_body_nested_too_deeply_is_a_bad_request(dashboard: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    request = urllib.request.Request(
        dashboard + "/api/dead/purge",
        data=deep,
        headers={"Content-Type": "application/json", "X-Taskq-Token": TOKEN},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["message"] == "the body must be a JSON object"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_only_loopback_host_names_are_served(
    app: App, worker_env: dict[str, str], host: str
) -> None:
    """A site rebinding its own domain to 127.0.0.1 or ::1 must not read the dashboard."""
    with serve(worker_env, "--host", host) as url:
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for name, status in [
            (f"evil.example:{port}", 400),
            ("evil.example", 400),
            ("[::1", 400),
            ("[::1]evil.example", 400),
            (f"127.0.0.1:{port}x", 400),
            (f"[::1]:{port}", 200),
            (f"127.0.0.1:{port}", 200),
            ("localhost", 200),
        ]:
            conn.request("GET", "/api/state", headers={"Host": name})
            reply = conn.getresponse()
            reply.read()
            assert reply.status == status, name
        conn.close()


def test_behind_a_proxy_that_cuts_the_sub_path_off_pages_still_link_under_it(
    app: App, worker_env: dict[str, str]
) -> None:
    with serve(worker_env, "--root-path", "/ops/taskq/") as url:
        status, html = get(url + "/")  # as the proxy passes on /ops/taskq/
        assert status == 200
        assert '<base href="/ops/taskq/">' in html
        assert 'href="/' not in html.replace('<base href="/ops/taskq/">', "")
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
        conn.request("GET", "/jobs?id=abc")
        reply = conn.getresponse()
        reply.read()
        assert (reply.status, reply.getheader("Location")) == (303, "/ops/taskq/jobs/abc")
        conn.request("GET", "/api/state/")  # Starlette's own redirect keeps it too
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 307
        assert str(reply.getheader("Location")).endswith("/ops/taskq/api/state")
        conn.close()


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("taskq", "must start with /"),
        ("//evil.example", "must start with / (and only one)"),
        ("/a?b", "plain ASCII path"),
        ("/t\u00e2skq", "plain ASCII path"),
        ("/jobs", "must not start with /jobs"),
        ("/api/taskq", "must not start with /api"),
    ],
)
def test_a_root_path_must_be_a_plain_path_of_its_own(root: str, message: str) -> None:
    result = CliRunner().invoke(main, ["dashboard", "--root-path", root])
    assert result.exit_code == 2
    assert message in result.output


def test_unreachable_redis_is_reported_not_fatal(worker_env: dict[str, str]) -> None:
    env = dict(worker_env, TASKQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with serve(env) as url:
        status, body = get(url + "/")
        assert status == 503
        assert "Redis is unreachable" in body
        status, body = get(url + "/api/state")
        assert (status, json.loads(body)["ok"]) == (503, False)


# -- the page ------------------------------------------------------------------------------
def test_read_only_without_a_token(app: App, readonly_dashboard: str, page: Page) -> None:
    job = dead_letter_of_boom(app, "read only please")
    page.goto(readonly_dashboard)
    page.get_by_text("ValueError: read only please", exact=True).wait_for()
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("#token").count() == 0
    assert "read-only" in page.locator("header").inner_text()
    page.goto(f"{readonly_dashboard}/jobs/{job.id}")
    assert page.locator("#job-status").inner_text() == "failed"
    assert page.locator("button[data-action]").count() == 0
    for action in ("retry", "purge"):
        status, _ = post(
            f"{readonly_dashboard}/api/dead/{action}", {"queue": "default", "id": job.id}, TOKEN
        )
        assert status == 403
    assert job.status() == "failed"


def test_user_data_is_escaped(app: App, dashboard: str, page: Page) -> None:
    script = "<script>window.pwned = 1</script>"
    img = '"><img src=x onerror="window.pwned = 2">'
    done = tasks.record.push([script, img])  # returns its argument: the result too
    failed = tasks.boom.push(script)  # the error, the traceback and the dead letter
    taskq.Worker(app, burst=True, handle_signals=False).run()
    queued = tasks.record.push({img: script})

    status, html = get(f"{dashboard}/jobs/{done.id}")
    assert status == 200
    assert "<script>window" not in html
    assert "<img" not in html
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html

    for url in (f"/jobs/{done.id}", f"/jobs/{failed.id}", f"/jobs/{queued.id}", "/"):
        page.goto(dashboard + url)
        page.locator("#status", has_text="updated").wait_for()  # one auto-refresh: the
        # main part's HTML was swapped in by script too
        assert page.evaluate("window.pwned") is None, url
        assert page.locator("main img").count() == 0, url
    page.goto(f"{dashboard}/jobs/{done.id}")
    assert json.loads(page.locator("#job-result").inner_text()) == [script, img]
    page.goto(f"{dashboard}/jobs/{failed.id}")
    assert f"ValueError: {script}" in page.locator("pre.traceback").inner_text()


@pytest.mark.parametrize("root", ["", "/taskq"], ids=["at the root", "under a sub-path"])
def test_a_dead_letter_is_retried_with_a_click_and_then_completes(
    app: App, worker_env: dict[str, str], page: Page, r: redis.Redis, root: str
) -> None:
    """flaky("dash", 4) fails its 4 runs (1 + retries=3) and is dead-lettered; its
    5th run succeeds. So the retry clicked in the page is what makes it complete.
    Under a sub-path (--root-path, as behind a reverse proxy) every link, form and
    request of the page must stay under it."""
    job = tasks.flaky.push("dash", 4)
    with worker_thread(app), pytest.raises(taskq.JobFailed):
        job.result(timeout=15)
    waiting = tasks.add.push(1, 2)

    with serve(worker_env, "--token", TOKEN, *(["--root-path", root] if root else [])) as url:
        dashboard = url + root
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        _retry_with_a_click(app, dashboard, page, r, job, waiting)
    assert requested
    assert all(u.startswith(dashboard + "/") for u in requested), requested


def _retry_with_a_click(
    app: App,
    dashboard: str,
    page: Page,
    r: redis.Redis,
    job: taskq.Job[int],
    waiting: taskq.Job[int],
) -> None:
    page.goto(dashboard + "/")
    assert count(page, "queued") == "1"
    assert count(page, "dead") == "1"
    page.locator(f'a[href="jobs/{waiting.id}"]').wait_for()
    page.fill("input[name=id]", waiting.id)  # the job by id
    page.click("form.lookup button")
    page.wait_for_url(f"{dashboard}/jobs/{waiting.id}")
    assert page.locator("#job-status").inner_text() == "queued"
    assert "add" in page.locator("table.facts").inner_text()
    page.click("a.brand")  # home
    page.wait_for_url(f"{dashboard}/")

    page.goto(dashboard + "/")
    page.fill("#token", TOKEN)
    page.click(f'button.retry[data-id="{job.id}"]')
    page.locator("#message").get_by_text(f"retried {job.id}").wait_for()
    assert r.zcard(KEYS.dead("default")) == 0
    assert job.status() == "queued"

    taskq.Worker(app, burst=True, handle_signals=False).run()
    assert job.result(timeout=0) == 5
    assert waiting.result(timeout=0) == 3
    page.locator('[data-count="done"]', has_text="2").wait_for()  # the page refreshed
    assert count(page, "dead") == "0"
    page.goto(f"{dashboard}/jobs/{job.id}")
    assert page.locator("#job-status").inner_text() == "done"
    assert page.locator("#job-result").inner_text().strip() == "5"


def test_purge_with_a_click(app: App, dashboard: str, page: Page, r: redis.Redis) -> None:
    first = dead_letter_of_boom(app, "one")
    dead_letter_of_boom(app, "two")
    page.goto(dashboard)
    page.fill("#token", TOKEN)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f'button.purge[data-id="{first.id}"]')
    page.locator("#message").get_by_text("purged 1 dead letter(s)").wait_for()
    page.locator('[data-count="dead"]', has_text="1").wait_for()
    assert r.zcard(KEYS.dead("default")) == 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button.purge:not([data-id])")  # every dead letter of the queue
    page.locator('[data-count="dead"]', has_text="0").wait_for()
    assert r.zcard(KEYS.dead("default")) == 0


def test_screenshot_of_a_busy_dashboard(
    app: App, dashboard: str, page: Page, r: redis.Redis, tmp_path: Path
) -> None:
    """Queued, running, delayed and dead jobs and a live worker, on one page.

    TASKQ_DASHBOARD_SCREENSHOT=docs/dashboard.png saves the README's picture."""
    flaky = tasks.flaky.push("shot", 10)
    with worker_thread(app), pytest.raises(taskq.JobFailed):
        flaky.result(timeout=15)
    dead_letter_of_boom(app, "could not reach the mail server")
    page.goto(dashboard)  # the first sample of the rates
    tasks.add.push_many([(i, i) for i in range(25)])
    taskq.Worker(app, burst=True, handle_signals=False).run()
    with worker_thread(app, concurrency=2, grace=0.1):
        tasks.slow.push(30, "resize")
        tasks.slow.push(30, "thumbnail")
        wait_event(r, "start:resize")
        wait_event(r, "start:thumbnail")
        tasks.add.push_many([(i, 10 * i) for i in range(4)])
        tasks.add.options(delay=600).push(2, 3)
        page.locator('[data-count="running"]', has_text="2").wait_for()
        page.locator("td", has_text="/s").first.wait_for()
        out = Path(os.environ.get("TASKQ_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        page.screenshot(path=str(out), full_page=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
