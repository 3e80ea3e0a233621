#!/usr/bin/env bash
# hack/kind/docker.sh — make sure a Docker engine answers.
#
#   hack/kind/docker.sh up     if `docker info` fails: install Debian's docker.io (apt) when
#                              dockerd is missing, and start dockerd ourselves (no systemd needed)
#   hack/kind/docker.sh down   stop the dockerd that `up` started (pid file), nothing else
#
# dockerd runs with a runc wrapper as its default runtime: on hosts whose capability bounding
# set lacks CAP_SYS_RESOURCE, `docker run --privileged` (which kind always uses) asks for every
# known capability and runc fails with "unable to apply caps". The wrapper drops that one
# capability from the OCI spec; on other hosts it changes nothing.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="$KIND_CACHE/docker"
WRAPPER="$STATE/runc-nosysres"

write_wrapper() {
  mkdir -p "$STATE"
  cat >"$WRAPPER.tmp" <<'SH'
#!/bin/bash
# runc, minus CAP_SYS_RESOURCE when this host cannot grant it (written by hack/kind/docker.sh)
b=""; p=""; args=("$@")
for ((i=0; i<${#args[@]}; i++)); do case "${args[$i]}" in
  --bundle|-b) b="${args[$((i+1))]}" ;; --bundle=*) b="${args[$i]#--bundle=}" ;;
  --process|-p) p="${args[$((i+1))]}" ;; --process=*) p="${args[$i]#--process=}" ;; esac; done
strip() { [[ -f "$1" ]] && grep -q CAP_SYS_RESOURCE "$1" || return 0
  jq -c "($2) |= (if . == null then . else with_entries(.value |= map(select(. != \"CAP_SYS_RESOURCE\"))) end)" "$1" >"$1.t" && mv "$1.t" "$1"; }
[[ -n "$b" ]] && strip "$b/config.json" '.process.capabilities'
[[ -n "$p" ]] && strip "$p" '.capabilities'
exec runc "$@"
SH
  chmod +x "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"
}

# Bit 24 of CapBnd is CAP_SYS_RESOURCE.
lacks_sys_resource() {
  local bnd; bnd="$(awk '/^CapBnd/ {print $2}' /proc/self/status)"
  (( (16#$bnd >> 24 & 1) == 0 ))
}

up() {
  docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null || apt_install "$KIND_CACHE/apt-docker.log" docker.io
  command -v jq >/dev/null || apt_install "$KIND_CACHE/apt-jq.log" jq
  local args=()
  if lacks_sys_resource; then
    write_wrapper
    args+=(--add-runtime "nosysres=$WRAPPER" --default-runtime nosysres)
  fi
  [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null && rm -f /var/run/docker.pid
  log "starting dockerd (log $STATE/dockerd.log)"
  mkdir -p "$STATE"
  setsid nohup dockerd "${args[@]}" >"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$STATE/dockerd.pid"
  local i
  for ((i = 0; i < 60; i++)); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not answer within 60 s"
}

down() {
  local pid
  pid="$(cat "$STATE/dockerd.pid" 2>/dev/null)" || return 0
  kill "$pid" 2>/dev/null || true
  rm -f "$STATE/dockerd.pid"
}

case "${1:-up}" in up) up ;; down) down ;; *) die "usage: $0 up|down" ;; esac
