"""Which exceptions the Redis call sites (sessions, rate limits, usage, tool ledger, cascade counters)
take for a store failure (503, the turn left for a takeover) rather than for a bug in our own code."""

from __future__ import annotations

import os

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from strata_runtime.stores.redis import is_redis_failure

pytestmark = pytest.mark.unit


def _raised_in(filename: str, body: str = "writer.writelines([b'x'])") -> Exception:
    """The exception `body` raises in a function compiled as if it were in `filename`."""
    namespace: dict[str, object] = {}
    exec(compile(f"def write(writer):\n    {body}\n", filename, "exec"), namespace)
    try:
        namespace["write"](None)  # type: ignore[operator]
    except Exception as e:
        return e
    raise AssertionError("nothing raised")


def test_the_clients_own_errors_are_store_failures() -> None:
    assert is_redis_failure(RedisConnectionError("Connection closed by server."))
    assert is_redis_failure(ConnectionResetError())
    assert is_redis_failure(TimeoutError())


def test_an_attribute_error_inside_the_redis_package_is_a_store_failure() -> None:
    # redis-py's asyncio connection, closed by another task mid-write during a cluster failover
    inside = os.sep.join(["", "venv", "site-packages", "redis", "asyncio", "connection.py"])
    assert is_redis_failure(_raised_in(inside))
    # uvloop's closed transport, reached from the client's write
    closed = "raise RuntimeError('unable to perform operation: the handler is closed')"
    assert is_redis_failure(_raised_in(inside, closed))


def test_an_attribute_error_in_our_own_code_stays_a_bug() -> None:
    ours = os.sep.join(["", "work", "runtime", "strata_runtime", "memory", "l2.py"])
    assert not is_redis_failure(_raised_in(ours))
    assert not is_redis_failure(_raised_in(ours, "raise RuntimeError('a bug of ours')"))
    assert not is_redis_failure(AttributeError("never raised: no traceback"))
    assert not is_redis_failure(ValueError("not a store failure"))
