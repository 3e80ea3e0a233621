"""A raw stdio MCP server for misbehaviour: JSON-RPC by hand on stdin/stdout, each tool a way to break.

    python raw_stdio.py [--ignore-sigterm] [--junk-at-start]

Tools: `ok` (answers "fine"), `junk` (writes lines that are not JSON-RPC, then answers), `long_line`
(writes an endless line with no newline), `exit` (exits mid-call), `close_stdout` (closes its stdout and
keeps running, reading stdin), `hang` (never answers), `pid` (answers its pid). With --ignore-sigterm
it ignores SIGTERM and the end of its stdin (only SIGKILL stops it). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

TOOLS = ["ok", "junk", "long_line", "exit", "close_stdout", "hang", "pid"]


def send(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def result(rid: object, text: str) -> None:
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})


def stay_alive() -> None:
    while True:
        time.sleep(3600)


def call(rid: object, name: str) -> None:
    if name == "junk":
        sys.stdout.write("this is not json\n{\"half\": \n[1, 2, 3]\n{\"jsonrpc\": \"2.0\", \"method\": 5}\n\n")
        sys.stdout.write("\xff\xfe garbage bytes\n")
        sys.stdout.flush()
        result(rid, "after junk")
    elif name == "long_line":
        block = "x" * 65536
        for _ in range(16_000):  # 1 GB if nobody stops reading it
            sys.stdout.write(block)
        sys.stdout.flush()
        stay_alive()
    elif name == "exit":
        os._exit(3)
    elif name == "close_stdout":
        sys.stdout.flush()
        os.close(1)
        for _ in sys.stdin:  # keeps running, reading what it is sent
            pass
        stay_alive()
    elif name == "hang":
        return
    elif name == "pid":
        result(rid, str(os.getpid()))
    else:
        result(rid, "fine")


def main() -> None:
    ignore = "--ignore-sigterm" in sys.argv
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--junk-at-start" in sys.argv:
        sys.stdout.write("Starting server v1.0...\n")
        sys.stdout.flush()
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        rid, method = message.get("id"), message.get("method")
        if rid is None or method is None:
            continue  # a notification, or an answer of the client
        if method == "initialize":
            params = message.get("params") or {}
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}}, "serverInfo": {"name": "raw-stdio", "version": "0"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
                {"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]}})
        elif method == "tools/call":
            call(rid, str((message.get("params") or {}).get("name")))
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}})
    if ignore:
        stay_alive()  # stdin closed: it should exit now, and does not


if __name__ == "__main__":
    main()
