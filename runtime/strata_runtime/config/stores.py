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
        description="auto: use Redis when a URL is set; while it is down the response cache degrades to "
        "in-process memory but sessions never do (session requests fail with 503 + Retry-After and "
        "readiness fails, see docs/durability.md); redis: Redis is required for everything; "
        "memory: never use Redis (sessions live in this one process).",
    )
    url: str | None = Field(None, description="Redis URL; prefer urlEnv when it carries a password.")
    url_env: str | None = Field(None, description="Environment variable holding the Redis URL.")
    cluster: bool = Field(False, description="Talk Redis Cluster protocol (url is a seed node).")
    key_prefix: str = Field("strata", min_length=1, description="Prefix of every key this runtime writes.")
    connect_timeout_seconds: float = Field(1.0, gt=0, le=60)
    socket_timeout_seconds: float = Field(1.0, gt=0, le=60)
    recover_interval_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often an unreachable Redis is probed again (also the Retry-After "
        "of session requests refused meanwhile)."
    )
    max_connections: int = Field(
        64, ge=1, le=10_000, description="Connections in the pool (per Cluster node); a command waits up to "
        "poolTimeoutSeconds for a free one."
    )
    pool_timeout_seconds: float = Field(2.0, gt=0, le=60, description="Longest wait for a free pooled connection.")
    command_timeout_seconds: float = Field(
        5.0, gt=0, le=600, description="Longest wait for one Redis command or pipeline, everything included: the "
        "wait for a pooled connection, connecting, the client's retries and, on a Cluster, its topology refreshes "
        "and redirections (each attempt has its own socketTimeoutSeconds). Past it the command fails like a "
        "socket timeout: a request that needed session state gets 503 + Retry-After, the cache is skipped, and "
        "the connection the command was using is closed, not reused."
    )
    failure_threshold: int = Field(
        3, ge=1, le=100, description="Consecutive timeouts (a slow PING or command) before Redis counts as "
        "unreachable; a refused or reset connection counts at once."
    )


class SqlStoreConfig(ConfigModel):
    backend: SqlBackend = "auto"
    dsn_env: str | None = Field(
        None, description="Environment variable holding the Postgres DSN (DSNs carry passwords)."
    )
    sqlite_path: str = Field("./strata.db", description="SQLite file used when Postgres is not configured.")
    connect_timeout_seconds: float = Field(2.0, gt=0, le=60)
    command_timeout_seconds: float = Field(
        5.0, gt=0, le=600, description="Longest wait for one Postgres statement, including the wait for a pooled "
        "connection: past it the request that needed it gets 503 + Retry-After and Postgres counts as unreachable "
        "until the next probe (a hung server is not waited on)."
    )
    recover_interval_seconds: float = Field(5.0, gt=0, le=3600)
    max_connections: int = Field(10, ge=1, le=1000, description="Postgres connections in the pool.")


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
    memory_max_rows: int = Field(
        10_000, ge=1, le=10_000_000, description="Rows per collection kept by the in-process index (backend "
        "memory, or auto while Milvus is unreachable); beyond it the least recently written rows are dropped."
    )


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
