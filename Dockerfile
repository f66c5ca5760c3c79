# syntax=docker/dockerfile:1
#
# The taskwarren worker image. Build it from the repository root:
#
#     docker build -t taskwarren:local .
#     docker build -t taskwarren:local --build-arg EXTRAS=postgres .   # with psycopg
#
# Two stages on the same base image. "build" turns the library (taskwarren) and
# the email pipeline (taskwarren-email, from workers/) into wheels and installs
# them, with their dependencies, into a virtual environment at /opt/venv.
# "runtime" receives that one directory and nothing else from "build": no
# source tree, no wheel cache, no build backend. It runs as an unprivileged
# user, and its entrypoint is the taskwarren command itself, so SIGTERM from
# `docker stop` or the kubelet reaches the worker's supervisor directly (PID 1).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

# Optional extras of the taskwarren-email distribution, comma-separated (e.g. "postgres").
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The venv is created at the path it keeps in the runtime stage, because the
# scripts pip writes (bin/taskwarren) name their interpreter by absolute path.
RUN python -m venv /opt/venv

COPY pyproject.toml README.md LICENSE ./
COPY taskwarren ./taskwarren
COPY workers ./workers

# The wheel files are named on the command line, so pip takes these two from
# here and only their dependencies from the index.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . ./workers \
 && email="$(echo /wheels/taskwarren_email-*.whl)" \
 && if [ -n "$EXTRAS" ]; then email="${email}[${EXTRAS}]"; fi \
 && /opt/venv/bin/python -m pip install /wheels/taskwarren-[0-9]*.whl "$email" \
 && /opt/venv/bin/taskwarren demo --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="taskwarren" \
      org.opencontainers.image.description="taskwarren worker: a durable Python task queue on RabbitMQ" \
      org.opencontainers.image.licenses="MIT"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot against it.
# /var/lib/taskwarren is the working directory and the only place the user may
# write (the SQLite defaults of `taskwarren demo` and EMAIL_ANALYSIS_DB land there).
RUN groupadd --system --gid 10001 taskwarren \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/taskwarren --shell /usr/sbin/nologin taskwarren \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/taskwarren

COPY --from=build /opt/venv /opt/venv

WORKDIR /var/lib/taskwarren
USER 10001:10001

# Prometheus metrics of the worker pool (`--metrics-port`).
EXPOSE 9808

# The worker's graceful stop: stop consuming, hand back unstarted messages,
# let running tasks finish within TASKWARREN_GRACE_S, exit 0. Give the
# container runtime more time than that before it sends SIGKILL
# (compose: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# Exits 0 when the local worker pool answers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["taskwarren", "health"]

ENTRYPOINT ["taskwarren"]
CMD ["worker", "workers.email_analysis.tasks", "-c", "2", "--metrics-port", "9808"]
