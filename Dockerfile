# taskq worker image: `docker build -t taskq .`, then `docker run taskq worker`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY taskq ./taskq
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin taskq

# Work from the user's home: `--app` modules mounted or copied here are importable.
WORKDIR /home/taskq
USER taskq

# The worker reports itself alive through its heartbeat in Redis.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["taskq", "health"]

# Exec form: taskq is PID 1 and receives SIGTERM from `docker stop` itself,
# so it drains running jobs and puts unfinished ones back before exiting.
ENTRYPOINT ["taskq"]
CMD ["worker"]
