#!/usr/bin/env bash
# hack/kind/node-image.sh — a kind node image built without any container registry.
#
# `kind build node-image` pulls its base image and every system image, so it cannot run offline.
# This script does its steps itself, from the local Debian image (hack/kind/debian.sh) and the
# binaries of hack/kind/build-bins.sh + hack/control-plane.sh build:
#   1. base image: kind's images/base (systemd, Debian's containerd/runc/CNI plugins, kind's files)
#   2. system images, named $OFFLINE_REPO/<name>:<tag> exactly as `kubeadm config images list
#      --image-repository $OFFLINE_REPO` prints them, + coredns, pause, local-path-provisioner
#   3. node image: base + kubeadm/kubelet/kubectl/crictl + a static bridge CNI config + the
#      local-path storage manifest + every system image imported (pinned) into its containerd.
# Every image carries a label with the hash of its inputs; an unchanged image is not rebuilt.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND_SRC="$STRATA_CACHE/go/pkg/mod/sigs.k8s.io/kind@$KIND_VERSION"
CTX="$KIND_CACHE/ctx"
BASE_IMAGE="strata.local/kind-base:bookworm"
STAMP_LABEL=dev.strata.inputs

# fresh <image> <stamp>: true when the image exists with that stamp
fresh() { [[ "$(docker image inspect -f "{{index .Config.Labels \"$STAMP_LABEL\"}}" "$1" 2>/dev/null)" == "$2" ]]; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# build_from <image> <dockerfile text> <context dir>
build_from() {
  local image="$1" df="$2" ctx="$3" stamp
  stamp="$( { printf '%s' "$df"; tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . ; } | sha256sum | cut -c1-16)"
  fresh "$image" "$stamp" && return 0
  printf '%s\n' "$df" >"$ctx/Dockerfile"
  docker build -q --label "$STAMP_LABEL=$stamp" -t "$image" "$ctx" >/dev/null \
    || die "docker build $image failed"
  log "built $image"
}

base_image() {
  local ctx="$CTX/base" stamp
  [[ -d "$KIND_SRC/images/base/files" ]] || die "kind $KIND_VERSION source not in the module cache (run hack/kind/build-bins.sh)"
  rm -rf "$ctx"; mkdir -p "$ctx"; cp -r "$KIND_SRC/images/base/files" "$ctx/files"; chmod -R u+w "$ctx"
  rm -f "$ctx/files/etc/systemd/system/containerd-fuse-overlayfs.service"
  # no fuse-overlayfs proxy plugin (rootless only); our pause image; and restrict_oom_score_adj:
  # lowering oom_score_adj needs CAP_SYS_RESOURCE, which nested containers may not have.
  awk '/^\[proxy_plugins\]/ {skip=1; next} skip && /^\[plugins/ {skip=0} !skip' \
    "$KIND_SRC/images/base/files/etc/containerd/config.toml" \
    | sed -e "s#sandbox_image = .*#sandbox_image = \"$OFFLINE_REPO/pause:$PAUSE_VERSION\"#" \
          -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' >"$ctx/files/etc/containerd/config.toml"
  cp "$ROOT/hack/kind/node-base.Dockerfile" "$ctx/Dockerfile"
  stamp="$( { echo "$LOCAL_DEBIAN"; tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . ; } | sha256sum | cut -c1-16)"
  fresh "$BASE_IMAGE" "$stamp" && return 0
  log "building $BASE_IMAGE (Debian packages; cold ~1 min)"
  nice -n 10 docker build -q --build-arg "BASE=$LOCAL_DEBIAN" --label "$STAMP_LABEL=$stamp" -t "$BASE_IMAGE" "$ctx" >/dev/null \
    || die "docker build $BASE_IMAGE failed"
}

# scratch_image <image> <binary> <path in image> [extra Dockerfile lines]
scratch_image() {
  local image="$1" bin="$2" dest="$3" extra="${4:-}" ctx
  ctx="$CTX/$(basename "$2")"
  [[ -x "$bin" ]] || die "missing $bin"
  rm -rf "$ctx"; mkdir -p "$ctx"; cp "$bin" "$ctx/bin"
  build_from "$image" "FROM scratch
COPY bin $dest
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$extra" "$ctx"
}

system_images() {
  local r="$OFFLINE_REPO" v="$K8S_VERSION" b ctx
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    scratch_image "$r/$b:$v" "$KUBE_BIN/$b" "/usr/local/bin/$b"
  done
  scratch_image "$r/etcd:$ETCD_IMAGE_TAG" "$KUBE_BIN/etcd" /usr/local/bin/etcd
  scratch_image "$r/pause:$PAUSE_VERSION" "$KIND_BIN/pause" /pause $'USER 65535:65535\nENTRYPOINT ["/pause"]'
  # coredns binds :53; upstream's image relies on a file capability, so it runs as root here.
  scratch_image "$r/coredns:v${COREDNS_VERSION#v}" "$KIND_BIN/coredns" /coredns 'ENTRYPOINT ["/coredns"]'
  scratch_image "$r/local-path-provisioner:$LOCAL_PATH_VERSION" "$KIND_BIN/local-path-provisioner" /usr/local/bin/local-path-provisioner
  ctx="$CTX/kube-proxy"; rm -rf "$ctx"; mkdir -p "$ctx"; cp "$KIND_BIN/kube-proxy" "$ctx/kube-proxy"
  build_from "$r/kube-proxy:$v" "FROM $LOCAL_DEBIAN
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables nftables conntrack ipset kmod && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy" "$ctx"
  ctx="$CTX/local-path-helper"; rm -rf "$ctx"; mkdir -p "$ctx"
  build_from "$r/local-path-helper:v1" "FROM $LOCAL_DEBIAN" "$ctx"
}

system_image_names() {
  local r="$OFFLINE_REPO" v="$K8S_VERSION"
  echo "$r/kube-apiserver:$v $r/kube-controller-manager:$v $r/kube-scheduler:$v $r/kube-proxy:$v"
  echo "$r/etcd:$ETCD_IMAGE_TAG $r/pause:$PAUSE_VERSION $r/coredns:v${COREDNS_VERSION#v}"
  echo "$r/local-path-provisioner:$LOCAL_PATH_VERSION $r/local-path-helper:v1"
}

node_files() {
  local dir="$CTX/node"; rm -rf "$dir"; mkdir -p "$dir"
  # kind's storage manifest (local-path-provisioner), with our image names.
  awk '/^const defaultStorageManifest = `/ {on=1; next} on && /^`/ {exit} on' "$KIND_SRC/pkg/build/nodeimage/const_storage.go" \
    | sed -e "s#\` + storageProvisionerImage + \`#$OFFLINE_REPO/local-path-provisioner:$LOCAL_PATH_VERSION#" \
          -e "s#\` + storageHelperImage + \`#$OFFLINE_REPO/local-path-helper:v1#" >"$dir/default-storage.yaml"
  grep -q "$OFFLINE_REPO/local-path-provisioner" "$dir/default-storage.yaml" || die "could not adapt kind's storage manifest"
  # Single node: a plain bridge with host-local IPAM stands in for kindnetd.
  cat >"$dir/10-strata-bridge.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "strata-kind", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "${POD_CIDR%.*.*}.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
  echo "$dir"
}

node_image() {
  local dir stamp c img ids
  dir="$(node_files)"
  ids="$(for img in $(system_image_names) "$BASE_IMAGE"; do docker image inspect -f '{{.Id}}' "$img"; done)"
  stamp="$( { echo "$ids"; sha256sum "$KIND_BIN/kubeadm" "$KIND_BIN/kubelet" "$KUBE_BIN/kubectl" "$KIND_BIN/crictl"; \
             cat "$dir"/*; } | sha256sum | cut -c1-16)"
  fresh "$NODE_IMAGE" "$stamp" && return 0
  local t0; t0="$(now)"; log "building $NODE_IMAGE"
  c="strata-kind-build-$$"
  docker run -d --entrypoint=sleep --name="$c" --security-opt seccomp=unconfined "$BASE_IMAGE" infinity >/dev/null
  trap 'docker rm -f -v "$c" >/dev/null 2>&1 || true' RETURN
  for b in "$KIND_BIN/kubeadm" "$KIND_BIN/kubelet" "$KUBE_BIN/kubectl" "$KIND_BIN/crictl"; do docker cp "$b" "$c:/usr/bin/"; done
  docker exec "$c" sh -c "chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/bin/crictl \
    && printf $K8S_VERSION > /kind/version && mkdir -p /etc/cni/net.d /kind/manifests"
  docker cp "$dir/10-strata-bridge.conflist" "$c:/etc/cni/net.d/"
  docker cp "$dir/default-storage.yaml" "$c:/kind/manifests/"
  docker exec "$c" bash -c 'nohup containerd >/dev/null 2>&1 &'
  docker exec "$c" bash -c 'for i in $(seq 30); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1' \
    || die "containerd did not start in the build container"
  for img in $(system_image_names); do
    # --no-unpack: overlayfs cannot be mounted inside the build container; the node unpacks at first use.
    docker save "$img" | docker exec -i "$c" ctr -n k8s.io images import --all-platforms --no-unpack --digests - >/dev/null
    docker exec "$c" ctr -n k8s.io images label "$img" io.cri-containerd.pinned=pinned >/dev/null
  done
  docker exec "$c" pkill containerd || true; sleep 2
  docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change "LABEL $STAMP_LABEL=$stamp" "$c" "$NODE_IMAGE" >/dev/null
  log "built $NODE_IMAGE in $(elapsed "$t0")"
}

case "${1:-all}" in
  base) base_image ;;
  system) system_images ;;
  names) system_image_names ;;
  all) base_image; system_images; node_image ;;
  *) die "usage: $0 [all|base|system|names]" ;;
esac
