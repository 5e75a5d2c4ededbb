# vaultq in a container: the `vaultq` command is the entry point.
#
#   docker build -t vaultq .
#   docker run --rm vaultq                      # vaultq --help
#   docker run --rm vaultq demo                 # the demo, embedded broker, no setup
#
# For your own app, build FROM this image (or copy these steps), add your code, and run
# a worker with the keys mounted read-only and the broker in the environment:
#
#   docker run --rm \
#     -v /srv/secrets/vaultq.keys:/run/secrets/vaultq.keys:ro \
#     -e VAULTQ_KEYS=@/run/secrets/vaultq.keys \
#     -e VAULTQ_BROKER=redis://redis:6379/0 \
#     myimage worker myapp.jobs --concurrency 20
#
# The key file must be mode 0600 and readable by the container's user (uid 10001):
# vaultq refuses key files that group or others can read.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 vaultq \
    && useradd --system --uid 10001 --gid vaultq --home-dir /app --shell /usr/sbin/nologin vaultq

WORKDIR /src
COPY pyproject.toml README.md ./
COPY vaultq ./vaultq
RUN pip install . && rm -rf /src

# The working directory is on the import path of `vaultq worker MODULE`, and holds the
# embedded broker's vaultq.db when no broker is configured.
WORKDIR /app
RUN chown vaultq:vaultq /app
USER vaultq

ENTRYPOINT ["vaultq"]
CMD ["--help"]
