"""`strata-runtime --config FILE [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import sys

from strata_runtime.config import ConfigError, load_config
from strata_runtime.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="strata-runtime", description="Run the Strata agent runtime.")
    parser.add_argument("--config", default=os.environ.get("STRATA_CONFIG"),
                        help="runtime config YAML (default: $STRATA_CONFIG)")
    parser.add_argument("--host", default=None, help="override server.host")
    parser.add_argument("--port", type=int, default=None, help="override server.port")
    parser.add_argument("--log-level", default=os.environ.get("STRATA_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config FILE is required (or set STRATA_CONFIG)")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"strata-runtime: {e}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    from strata_runtime.server import serve

    serve(config, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
