"""Freed C heap goes back to the system after start-up (services.release_free_heap)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from strata_runtime.services import release_free_heap

pytestmark = pytest.mark.unit

BLOCK = 4096  # under glibc's mmap threshold: these come from the heap, not from mmap


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_pages_are_given_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(16_384)]  # 64 MB, touched so that it is resident
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    pin = libc.malloc(64)  # keeps the freed space off the top of the heap, where free() trims by itself
    for block in blocks:
        libc.free(block)
    before = _rss_bytes()
    release_free_heap()
    after = _rss_bytes()
    libc.free(pin)
    assert before - after > 32 * 1024 * 1024
