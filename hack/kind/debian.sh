#!/usr/bin/env bash
# hack/kind/debian.sh — a local Debian bookworm base image ($LOCAL_DEBIAN) for hosts that cannot
# pull from a container registry: debootstrap (minbase) from the Debian mirror apt already uses,
# imported with `docker import`. The rootfs tarball is cached, so a later run only imports it.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

docker image inspect "$LOCAL_DEBIAN" >/dev/null 2>&1 && exit 0
tarball="$KIND_CACHE/debian-bookworm-minbase.tar"
if [[ ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || apt_install "$KIND_CACHE/apt-debootstrap.log" debootstrap
  # The mirror apt is configured with (deb822 or one-line sources), never a hard-coded host.
  mirror="$(grep -rhoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -1 || true)"
  [[ -n "$mirror" ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
  t0="$(now)"; log "debootstrap bookworm (minbase) from $mirror"
  dir="$KIND_CACHE/debian-rootfs.$$"
  trap 'rm -rf "$dir"' EXIT
  nice -n 10 debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$KIND_CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$KIND_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  log "debootstrap done in $(elapsed "$t0")"
fi
docker import "$tarball" "$LOCAL_DEBIAN" >/dev/null
log "imported $LOCAL_DEBIAN"
