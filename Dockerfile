# One image for every Seamless service: `coordinator` is the entrypoint, `worker` is selected with
# `entrypoint: ["worker"]` (see docker-compose.yml). Build: docker build -t seamless-data-provider .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY worker ./worker
COPY provider ./provider
RUN pip install . && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /data seamless \
    && mkdir -p /data && chown seamless /data
USER seamless
WORKDIR /data
# 8701: coordinator HTTP API and status page; 4601: Raft; 9101: worker metrics.
EXPOSE 8701 4601 9101
ENTRYPOINT ["coordinator"]
CMD ["--help"]
