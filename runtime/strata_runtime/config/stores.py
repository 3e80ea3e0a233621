"""Where state lives: Redis, SQL and vector stores, each with an embedded fallback."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config.base import ConfigModel

RedisBackend = Literal["auto", "redis", "memory"]
SqlBackend = Literal["auto", "postgresql", "sqlite", "memory"]
VectorBackend = Literal["auto", "milvus", "memory"]


class RedisStoreConfig(ConfigModel):
    backend: RedisBackend = Field(
        "auto",
        description="auto: use Redis, degrade to in-process memory while it is down; "
        "redis: Redis is required (readiness fails without it); memory: never use Redis.",
    )
    url: str | None = Field(None, description="Redis URL; prefer urlEnv when it carries a password.")
    url_env: str | None = Field(None, description="Environment variable holding the Redis URL.")
    cluster: bool = Field(False, description="Talk Redis Cluster protocol (url is a seed node).")
    key_prefix: str = Field("strata", min_length=1, description="Prefix of every key this runtime writes.")
    connect_timeout_seconds: float = Field(1.0, gt=0, le=60)
    socket_timeout_seconds: float = Field(1.0, gt=0, le=60)
    recover_interval_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often a degraded `auto` backend retries the real one."
    )


class SqlStoreConfig(ConfigModel):
    backend: SqlBackend = "auto"
    dsn_env: str | None = Field(
        None, description="Environment variable holding the Postgres DSN (DSNs carry passwords)."
    )
    sqlite_path: str = Field("./strata.db", description="SQLite file used when Postgres is not configured.")
    connect_timeout_seconds: float = Field(2.0, gt=0, le=60)
    recover_interval_seconds: float = Field(5.0, gt=0, le=3600)


class VectorStoreConfig(ConfigModel):
    backend: VectorBackend = "auto"
    uri: str = Field(
        "./strata-milvus.db",
        description="milvus-lite file path (embedded) or a Milvus server URL (http://host:19530).",
    )
    uri_env: str | None = Field(None, description="Environment variable holding the Milvus URI.")
    token_env: str | None = Field(None, description="Environment variable holding the Milvus token.")
    connect_timeout_seconds: float = Field(10.0, gt=0, le=120)
    recover_interval_seconds: float = Field(10.0, gt=0, le=3600)


class StoresConfig(ConfigModel):
    redis: RedisStoreConfig = RedisStoreConfig()
    sql: SqlStoreConfig = SqlStoreConfig()
    vectors: VectorStoreConfig = VectorStoreConfig()

    @model_validator(mode="after")
    def _explicit_redis_needs_an_address(self) -> StoresConfig:
        if self.redis.backend == "redis" and not (self.redis.url or self.redis.url_env):
            raise ValueError("stores.redis.backend is 'redis' but neither url nor urlEnv is set")
        if self.sql.backend == "postgresql" and not self.sql.dsn_env:
            raise ValueError("stores.sql.backend is 'postgresql' but dsnEnv is not set")
        return self
