# syntax=docker/dockerfile:1
# Stillroom proxy image: dependencies from the hash lock, non-root, SQLite under /data.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/stillroom
COPY requirements/base.txt requirements/base.txt
RUN /opt/stillroom/bin/pip install --no-cache-dir --require-hashes --only-binary :all: \
        -r requirements/base.txt
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY storage storage
RUN /opt/stillroom/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /data stillroom \
    && mkdir -p /data && chown stillroom /data
COPY --from=build /opt/stillroom /opt/stillroom
ENV PATH=/opt/stillroom/bin:$PATH \
    STILLROOM_HOST=0.0.0.0 \
    STILLROOM_DATABASE=/data/stillroom.db
USER stillroom
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["stillroom", "serve"]
