#!/usr/bin/env bash
# `make run`: the runtime on embedded defaults (memory / SQLite / milvus-lite), the sample
# agent, and the offline demo provider. A Redis on 127.0.0.1:6379 is used if one answers.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-manifests/samples/runtime-local.yaml}"
port="${2:-8080}"
mkdir -p .strata
# A Redis on 127.0.0.1:6379 is used when it answers PING now; otherwise sessions, cache and limits
# stay in process (a Redis named in the config must be up: sessions never fall back).
if [ -z "${STRATA_LOCAL_REDIS_URL:-}" ] && redis_reply="$(timeout 1 bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && head -c 5 <&3' 2>/dev/null)" \
    && [ "$redis_reply" = "+PONG" ]; then
  export STRATA_LOCAL_REDIS_URL="redis://127.0.0.1:6379/0"
fi
stores="in-process memory, SQLite, milvus-lite"
[ -n "${STRATA_LOCAL_REDIS_URL:-}" ] && stores="Redis at $STRATA_LOCAL_REDIS_URL, SQLite, milvus-lite"
cat <<MSG

  Strata runtime — config: $config
  State: $stores
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
