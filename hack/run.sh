#!/usr/bin/env bash
# `make run`: the runtime on embedded defaults (memory / SQLite / milvus-lite), the sample
# agent, and the offline demo provider. Redis is used if one answers on the configured URL.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-manifests/samples/runtime-local.yaml}"
port="${2:-8080}"
mkdir -p .strata
cat <<MSG

  Strata runtime — config: $config
  Serving on http://127.0.0.1:$port  (Ctrl+C to stop)

  Try it:
    curl -s http://127.0.0.1:$port/readyz
    curl -s http://127.0.0.1:$port/v1/models
    curl -s http://127.0.0.1:$port/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model":"demo","messages":[{"role":"user","content":"hello"}]}'
    curl -s http://127.0.0.1:$port/api/v1/query -H 'content-type: application/json' \\
         -d '{"message":"my card has not arrived","session_id":"s1","chatbot_id":"support","tenant_id":"local"}'
    curl -s http://127.0.0.1:$port/metrics | head

MSG
exec .venv/bin/strata-runtime --config "$config" --port "$port"
