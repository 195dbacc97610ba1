# syntax=docker/dockerfile:1
#
# asapp-metadata-consumer image.
#
#   docker build -t asapp-metadata-consumer:dev .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e ASAPP_API_ID=... -e ASAPP_API_SECRET=... \
#       -p 9400:9400 asapp-metadata-consumer:dev
#
# Stage 1 builds the project's wheel (the wheel carries schemas/ as consumer/_schemas) and
# installs it with its runtime dependencies into a virtualenv. Stage 2 copies only that
# virtualenv onto a clean slim image: no build backend, no source tree, no compiler.
# Both stages use the same base so the venv's interpreter path is valid in the runtime stage.
# Bump PYTHON_IMAGE deliberately (and rebuild) to pick up interpreter/OS security fixes.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel needs: metadata, readme (referenced by pyproject), package, schemas.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY consumer/ consumer/

RUN python -m venv /opt/venv \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && /opt/venv/bin/pip install --no-cache-dir /dist/*.whl \
    && /opt/venv/bin/python -c "import importlib.resources as r; assert r.files('consumer').joinpath('_schemas').is_dir(), 'schemas missing from the wheel'"

FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="asapp-metadata-consumer" \
      org.opencontainers.image.description="Kafka consumer that delivers Avro metadata events to ASAPP's Metadata Ingestion API" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID (>10000, outside typical host ranges) so Kubernetes can verify
# runAsNonRoot without resolving names, and so volume permissions are predictable.
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid ${APP_UID} --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

# PYTHONUNBUFFERED: JSON log lines reach stdout immediately.
# PYTHONDONTWRITEBYTECODE: nothing is written under the (read-only) root filesystem.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    LOG_FORMAT=json \
    METRICS_PORT=9400

WORKDIR /tmp
USER ${APP_UID}:${APP_UID}

# Prometheus metrics, /healthz (liveness) and /readyz (readiness).
EXPOSE 9400

# python:*-slim has no curl or wget: probe /healthz with the standard library.
# urlopen raises on connection errors and non-2xx answers, so the exit code is non-zero then.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9400'), timeout=4)"]

# Exec form: the Python process is PID 1 and receives SIGTERM directly, so the service's
# graceful shutdown (flush, commit, close within SHUTDOWN_TIMEOUT_S) runs on `docker stop`
# and on pod termination.
ENTRYPOINT ["metadata-consumer", "run"]
