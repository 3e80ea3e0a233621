"""The `python` executor: allow-listed functions, run in a thread pool off the event loop.

Only targets named in `pythonTools.allowedEntryPoints` (`module:function`, or `module:*` for a
module's public functions) are imported; the list is part of the deployment, not of the agent
config, so an agent definition cannot name arbitrary code. The function gets the arguments as
keyword arguments; a coroutine function is awaited on the loop instead. A call that passes its
deadline answers `timeout`; its thread cannot be killed and finishes in the background (the
pool is bounded, so a hung function occupies one worker, not the loop).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from strata_runtime.tools.contract import CallContext, ErrorCode, ExecutorKind, ToolOutcome, ToolSpec

log = logging.getLogger("strata.tools")


def is_allowed(target: str, allowed: Iterable[str]) -> bool:
    module, _, name = target.partition(":")
    if not name or name.startswith("_"):
        return False
    return any(entry in (target, f"{module}:*") for entry in allowed)


class PythonExecutor:
    kind: ExecutorKind = "python"

    def __init__(self, allowed_entry_points: Iterable[str], max_workers: int = 4):
        self.allowed = tuple(allowed_entry_points)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="strata-tool")
        self._functions: dict[str, Callable[..., Any]] = {}

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _function(self, target: str) -> Callable[..., Any]:
        fn = self._functions.get(target)
        if fn is None:
            module_name, _, name = target.partition(":")
            fn = getattr(importlib.import_module(module_name), name)
            if not callable(fn):
                raise TypeError(f"{target} is not callable")
            self._functions[target] = fn
        return fn

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        if not is_allowed(tool.target, self.allowed):
            return ToolOutcome.failure(
                ErrorCode.EXECUTOR_UNAVAILABLE, f"entry point {tool.target} is not allow-listed in this runtime"
            )
        try:
            fn = self._function(tool.target)
        except (ImportError, AttributeError, TypeError) as e:
            return ToolOutcome.failure(ErrorCode.EXECUTOR_UNAVAILABLE, f"cannot load {tool.target}: {e}")
        budget = ctx.remaining(tool.timeout_seconds)
        try:
            async with asyncio.timeout(budget):
                if inspect.iscoroutinefunction(fn):
                    result = await fn(**args)
                else:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(self._pool, functools.partial(fn, **args))
        except TimeoutError:
            return ToolOutcome.failure(ErrorCode.TIMEOUT, f"no answer within {budget:.3g}s")
        except TypeError as e:
            return ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, str(e))
        except Exception as e:
            log.info("python tool raised", extra={"tool": tool.id, "error": type(e).__name__})
            return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, f"the tool raised {type(e).__name__}: {e}")
        return ToolOutcome.success(result)
