# syntax=docker/dockerfile:1
# Stillroom proxy image. Every Python package comes from a hash lock as a wheel; the runtime
# stage holds a venv with no pip and no setuptools, runs as a non-root user and keeps SQLite
# under /data. Checked by tests/test_deploy.py (hadolint and the properties below).
#
# The base is pinned by tag. To pin by digest as well, resolve it where a registry is reachable
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and write
# `python:3.11-slim-bookworm@sha256:<digest>` in both FROM lines (docs/operations.md).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Two venvs: /opt/build holds the build backend (setuptools, from its own lock) and never
# leaves this stage; /opt/stillroom is the runtime, created without pip.
COPY requirements/build.txt requirements/postgres.txt requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary :all: -r requirements/build.txt \
    && python -m venv --without-pip /opt/stillroom \
    && /opt/build/bin/pip --python /opt/stillroom/bin/python install \
        --require-hashes --only-binary :all: -r requirements/postgres.txt
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY storage storage
# Stillroom itself: built offline (no index, no build isolation) with the locked setuptools.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/stillroom/bin/python install --no-deps --no-index \
        /tmp/dist/stillroom-*.whl

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 stillroom \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin stillroom \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=build /opt/stillroom /opt/stillroom
# 0.0.0.0 only here: inside the container the published port is the only way in. Secrets (the
# admin token, the upstream key, a Postgres password) come from the environment at run time.
ENV PATH=/opt/stillroom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STILLROOM_HOST=0.0.0.0 \
    STILLROOM_PORT=8080 \
    STILLROOM_DATABASE=/data/stillroom.db
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# No curl in the slim image: ask /readyz with the venv's Python (a non-200 answer raises, exit 1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('STILLROOM_PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["stillroom", "serve"]
