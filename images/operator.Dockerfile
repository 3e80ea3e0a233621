# Strata operator image: the base package + the `operator` extra only (no FastAPI, Redis,
# Milvus...). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t strata-operator:0.1.0 .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY operator ./operator
RUN python -m venv /opt/strata \
 && /opt/strata/bin/pip install --upgrade pip \
 && /opt/strata/bin/pip install ".[operator]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/strata/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/strata /opt/strata
RUN groupadd --gid 10001 strata && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin strata
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["strata-operator"]
