"""``taskq dashboard``: a web page over a taskq Redis.

Queues (depths and rates), live workers and the jobs they run, any job's record,
delayed jobs, and dead letters with retry and purge. Starlette served by uvicorn;
the HTML is rendered on the server (everything escaped) and a little JavaScript
refreshes it. Modules: :mod:`.state` reads Redis, :mod:`.views` and :mod:`.markup`
render, :mod:`.actions` changes dead letters, :mod:`.web` is the ASGI app,
:mod:`.command` the CLI command. To serve it from your own ASGI server:
``taskq.dashboard.web.create_app(app, token=...)``. Nothing is imported here, so
the ``taskq`` command does not load the web stack unless it serves the dashboard.
"""

#: The first segments of the dashboard's routes (see web.Dashboard.routes).
ROUTE_ROOTS = ("jobs", "api", "static", "favicon.ico")
#: The host names of loopback addresses: a dashboard bound there is reached only by
#: this machine (and guarded against DNS rebinding, see web.LoopbackHostsOnly).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
