# Build stage: a virtualenv with exactly the pinned, hash-checked packages.
FROM python:3.11-alpine AS build
# Compilers only matter if a package has no musllinux wheel for this platform.
RUN apk add --no-cache build-base libffi-dev
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
RUN /venv/bin/pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt

# Runtime stage: the same Python on Alpine, the virtualenv and the package, nothing else.
FROM python:3.11-alpine
# The newest SQLite library of this Alpine release (the store logs its version at start),
# and the sqlite3 shell, so that symbols can be managed from inside the container.
RUN apk upgrade --no-cache sqlite-libs \
 && apk add --no-cache sqlite \
 && mkdir -p /app/.data \
 && chmod 1777 /app/.data
COPY --from=build /venv /venv
WORKDIR /app
COPY tickd /app/tickd
RUN /venv/bin/python -m compileall -q /app/tickd
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DB_PATH=/app/.data/ticks.db \
    HTTP_PORT=8080
# Not root. docker-compose.yml runs it as the user who calls `make run`, so that the
# files in the ./.data bind mount belong to that user.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD wget -q -O /dev/null "http://127.0.0.1:${HTTP_PORT}/healthz" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "tickd"]
