# A stand-in for python:3.11-slim-bookworm built from Debian packages (Debian bookworm's
# python3 is 3.11), for hosts that cannot pull from a registry. Used as BASE of images/*.Dockerfile.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && ln -s /usr/bin/python3 /usr/local/bin/python
