# Strata runtime image: one Uvicorn process per pod (`strata-runtime --config FILE`).
#   docker build -f images/runtime.Dockerfile -t strata-runtime:0.1.0 .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY operator ./operator
RUN python -m venv /opt/strata \
 && /opt/strata/bin/pip install --upgrade pip \
 && /opt/strata/bin/pip install ".[runtime]"

FROM python:3.11-slim-bookworm
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
