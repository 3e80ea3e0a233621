"""Stopping child processes the same way everywhere: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], grace_seconds: float) -> int:
    """Terminate `proc` (if it still runs), kill it after `grace_seconds`; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)
