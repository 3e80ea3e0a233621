# Strata operator image: the base package + the `operator` extra only (no FastAPI, Redis,
# Milvus...). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t strata-operator:0.1.0 .
# BASE and the two stages: see images/runtime.Dockerfile (the virtualenv /opt/strata is built by
# images/venv.sh at uv.lock's versions; the final stage has no uv, pip, binutils or compiler).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
WORKDIR /src
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml uv.lock README.md build-ca.pe[m] images/venv.sh ./
RUN sh venv.sh deps operator /opt/strata && sh venv.sh prune operator /opt/strata
COPY runtime ./runtime
COPY operator ./operator
RUN sh venv.sh project operator /opt/strata && sh venv.sh check operator /opt/strata

FROM ${BASE}
ENV PATH=/opt/strata/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/strata /opt/strata
RUN groupadd --gid 10001 strata && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin strata
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["strata-operator"]
