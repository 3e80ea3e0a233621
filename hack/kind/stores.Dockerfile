# The stores the e2e tests run in the cluster, from packages only (no registry): Redis,
# Postgres 15 and Prometheus from Debian, a Milvus standalone server from PyPI's `milvus` wheel. One
# image, four workloads (tests/kind/stores.py picks the command; Redis runs as a 3-master Cluster).
# Users run the official images.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY build-ca.pe[m] /tmp/
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      redis-server postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && if [ -f /tmp/build-ca.pem ]; then export PIP_CERT=/tmp/build-ca.pem; fi \
 && python3 -m venv /opt/milvus && /opt/milvus/bin/pip install "milvus==2.3.*" \
 && rm -f /tmp/build-ca.pem \
 && groupadd --gid 10001 store && useradd --uid 10001 --gid 10001 --home-dir /data --shell /bin/sh store
# Prometheus (Debian's) for the KEDA test of the default `prometheus` trigger: a layer of its own,
# so adding it left the layers above cached.
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ENV PATH=/usr/lib/postgresql/15/bin:/opt/milvus/bin:$PATH
USER 10001:10001
