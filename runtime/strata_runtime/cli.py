"""`strata-runtime`: serve, or check a config without serving.

    strata-runtime [serve] --config FILE [--host H] [--port P] [--log-level LEVEL]
    strata-runtime check --config FILE      validate FILE and print what it would run
    strata-runtime routing fit --policy FILE --labelled FILE.jsonl   fit routing thresholds (routing/cli.py)
    strata-runtime --version

Exit status 2 for a bad command line or an invalid config (the message names the field).
"""

from __future__ import annotations

import argparse
import os
import sys

from strata_runtime.cliargs import add_common_arguments
from strata_runtime.config import ConfigError, load_config
from strata_runtime.logs import configure_logging

INVALID = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata-runtime", description="Run the Strata agent runtime.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="check: validate the config and print what it would run, then exit")
    parser.add_argument("command", nargs="?", choices=("serve", "check"), default="serve",
                        help="serve (default) or check")
    parser.add_argument("--config", default=os.environ.get("STRATA_CONFIG"),
                        help="runtime config YAML (default: $STRATA_CONFIG)")
    parser.add_argument("--host", default=None, help="override server.host")
    parser.add_argument("--port", type=int, default=None, help="override server.port")
    add_common_arguments(parser, os.environ.get("STRATA_LOG_LEVEL", "info"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["routing"]:
        from strata_runtime.routing.cli import main as routing_main

        return routing_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config FILE is required (or set STRATA_CONFIG)")
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as e:
        print(f"strata-runtime: {e}", file=sys.stderr)
        return INVALID
    if args.command == "check":
        from strata_runtime.check import describe

        print(f"{args.config}: valid")
        print("\n".join(describe(config)))
        return 0
    configure_logging(args.log_level)
    from strata_runtime.server import serve

    serve(config, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
