# vaultq in a container: the `vaultq` command is the entry point.
#
#   docker build -t vaultq .
#   docker run --rm vaultq                      # vaultq --help
#   docker run --rm vaultq demo                 # the demo, embedded broker, no setup
#
# For your own app, build FROM this image (or copy these steps), add your code, and run
# a worker with the keys mounted read-only and the broker in the environment:
#
#   sudo chown 10001:10001 /srv/secrets/vaultq.keys && sudo chmod 0400 /srv/secrets/vaultq.keys
#   docker run --rm --init --stop-timeout 40 \
#     -v /srv/secrets/vaultq.keys:/run/secrets/vaultq.keys:ro \
#     -e VAULTQ_KEYS=@/run/secrets/vaultq.keys \
#     -e VAULTQ_BROKER=rediss://:password@redis:6380/0 \
#     myimage worker myapp.jobs --concurrency 20 --grace 30
#
# Keys: vaultq judges a key file like OpenSSH judges a private key: owned by the user it
# runs as (uid 10001 here) or root, and not readable by group or others. A root-owned
# 0400 file cannot be read by uid 10001, so give the file to 10001 (mode 0400 or 0600).
# Docker Swarm secrets: `uid: "10001"`, `gid: "10001"`, `mode: 0400`. Kubernetes cannot
# set a secret file's owner: docs/deployment.md shows the init container that copies it.
#
# Stopping: `docker stop` sends SIGTERM (STOPSIGNAL below), then SIGKILL after its timeout
# (10 s unless --stop-timeout / `docker stop -t` / compose `stop_grace_period` /
# Kubernetes `terminationGracePeriodSeconds` say otherwise). The worker stops fetching at
# SIGTERM and gives running jobs --grace seconds (default 30): set the stop timeout to
# --grace + 10 s (--grace + 15 s with --processes N), or running jobs are killed and
# only come back after their lease.
#
# Dependencies come from the hashed lock requirements/runtime.txt; the base image is
# pinned by patch version. Refresh both on purpose (docs/development.md).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 vaultq \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin vaultq

WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY vaultq ./vaultq
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf /src

# The working directory is on the import path of `vaultq worker MODULE`, and holds the
# embedded broker's vaultq.db when no broker is configured.
WORKDIR /app
RUN chown 10001:10001 /app
USER 10001:10001

# The worker rewrites its heartbeat file (default /tmp/vaultq-10001/worker.health, a 0700
# directory) from its event loop every 5 s; `vaultq health` fails when the file is missing,
# stale (the loop is stuck) or its process is gone. Containers that run something other
# than a worker would report unhealthy: run them with --no-healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["vaultq", "health"]
STOPSIGNAL SIGTERM

ENTRYPOINT ["vaultq"]
CMD ["--help"]
