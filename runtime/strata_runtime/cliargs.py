"""Command-line pieces both console scripts share: `--version` and a validated `--log-level`.

Only the standard library: the operator image imports this without the runtime's dependencies.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), not a second copy of it."""
    try:
        return version("strata")
    except PackageNotFoundError:
        return "unknown (not installed)"


def log_level(value: str) -> str:
    """argparse type of --log-level: a standard level name, any case, returned upper case."""
    name = value.strip().lower()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level (--log-level or $STRATA_LOG_LEVEL); use one of: {', '.join(LOG_LEVELS)}")
    return name.upper()


def add_common_arguments(parser: argparse.ArgumentParser, default_log_level: str) -> None:
    """--version and --log-level; a default taken from the environment is validated too."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--log-level", type=log_level, default=default_log_level, metavar="LEVEL",
                        help=f"{', '.join(LOG_LEVELS)} (default: $STRATA_LOG_LEVEL or info)")
