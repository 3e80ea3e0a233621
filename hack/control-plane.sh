#!/usr/bin/env bash
# hack/control-plane.sh — a real, local Kubernetes control plane without Docker.
#
#   hack/control-plane.sh up      build what is missing (cached), start etcd,
#                                 kube-apiserver, kube-controller-manager,
#                                 kube-scheduler and kwok (fake nodes), wait
#                                 until everything is healthy
#   hack/control-plane.sh down    stop exactly what `up` started (pid files)
#   hack/control-plane.sh env     print `export KUBECONFIG=...` / `export PATH=...`
#   hack/control-plane.sh status  show what is running
#   hack/control-plane.sh build   only build/install the binaries
#   hack/control-plane.sh clean   down, then remove all run-time state (etcd data, certs)
#
# Usage from a shell:   eval "$(hack/control-plane.sh env)"
#
# Heavy caches (Go module/build caches, binaries) live in
# ${STRATA_CACHE:-$HOME/.cache/strata}; run-time state (certs, etcd data, logs,
# pid files, kubeconfig) lives in <repo>/.cache/control-plane (gitignored).
#
# Binaries are built from the Go module proxy:
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd
#     from the wrapper module in hack/kube (requires k8s.io/kubernetes and
#     replaces every k8s.io staging module with its published v0.Y.Z);
#   - kwok and helm with `go install <pkg>@<version>`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE_MOD_DIR="$ROOT/hack/kube"

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
STATE="${STRATA_CONTROL_PLANE_DIR:-$ROOT/.cache/control-plane}"
PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
BIN_DIR="$STATE/bin"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"

KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Versions of kube and etcd come from hack/kube/go.mod (single source of truth).
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$KUBE_MOD_DIR/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$KUBE_MOD_DIR/go.mod")"

ETCD_CLIENT_PORT="${STRATA_ETCD_CLIENT_PORT:-12379}"
ETCD_PEER_PORT="${STRATA_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${STRATA_APISERVER_PORT:-16443}"
KCM_PORT="${STRATA_KCM_PORT:-16444}"
SCHEDULER_PORT="${STRATA_SCHEDULER_PORT:-16445}"
KWOK_PORT="${STRATA_KWOK_PORT:-16446}"
SERVICE_CIDR="10.0.0.0/16"   # => kubernetes.default service IP 10.0.0.1
CONTROL_PLANE_GOGC="${STRATA_CONTROL_PLANE_GOGC:-400}"
CONTROL_PLANE_GOMEMLIMIT="${STRATA_CONTROL_PLANE_GOMEMLIMIT:-2GiB}"
POD_CIDR="10.244.0.0/16"     # kwok hands out fake pod IPs from here
FAKE_NODES="${STRATA_FAKE_NODES:-2}"
WAIT_TIMEOUT="${STRATA_WAIT_TIMEOUT:-120}"

KUBE_BIN_DIR="$STRATA_CACHE/kube/$K8S_VERSION/bin"
KWOK_BIN_DIR="$STRATA_CACHE/kwok/$KWOK_VERSION/bin"
HELM_BIN_DIR="$STRATA_CACHE/helm/$HELM_VERSION/bin"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# ---------------------------------------------------------------------------
# Build / install
# ---------------------------------------------------------------------------

find_go() {
  local go
  go="$(command -v go || true)"
  [[ -z "$go" && -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go
  [[ -n "$go" ]] || die "no 'go' found (need Go >= 1.25 to build the control plane: PATH or /usr/local/go/bin)"
  echo "$go"
}

go_env() {
  export GOPATH="$STRATA_CACHE/go"
  export GOMODCACHE="$STRATA_CACHE/go/pkg/mod"
  export GOCACHE="$STRATA_CACHE/go/cache"
  export GOFLAGS="-modcacherw -p=${STRATA_BUILD_JOBS:-2}"
  export CGO_ENABLED=0
  GO="$(find_go)"
}

# What `kubectl version`, /version (and so helm's .Capabilities.KubeVersion)
# report; upstream's hack/lib/version.sh sets the same variables.
kube_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg x=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$x"
}

kube_stamp() { { cat "$KUBE_MOD_DIR/go.mod" "$KUBE_MOD_DIR/go.sum"; kube_ldflags; } | sha256sum | cut -c1-16; }

build_kube() {
  local dir="$STRATA_CACHE/kube/$K8S_VERSION" stamp ok=1 b
  stamp="$(kube_stamp)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
    [[ -x "$dir/bin/$b" ]] || ok=0
  done
  [[ "$(cat "$dir/.stamp" 2>/dev/null)" == "$stamp" ]] || ok=0
  ((ok)) && return 0
  go_env
  local t0 tmp; t0="$(now)"; tmp="$dir/bin.tmp.$$"
  log "building Kubernetes $K8S_VERSION + etcd $ETCD_VERSION from the Go module proxy (cold: ~10 min on 2 idle cores; log: $dir/build.log)"
  mkdir -p "$tmp"
  (
    cd "$KUBE_MOD_DIR"
    "$GO" build -trimpath -ldflags='-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3
    "$GO" build -trimpath -ldflags="$(kube_ldflags)" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl
  ) >"$dir/build.log" 2>&1 8>&- || { tail -30 "$dir/build.log" >&2; rm -rf "$tmp"; die "kube build failed (see $dir/build.log)"; }
  rm -rf "${dir:?}/bin"; mv "$tmp" "$dir/bin"; echo "$stamp" >"$dir/.stamp"
  log "built Kubernetes $K8S_VERSION in $(elapsed "$t0")"
}

# go_install_to <bin dir> <binary name> <pkg@version> [extra ldflags]
go_install_to() {
  local bindir="$1" name="$2" pkg="$3" ldflags="-s -w ${4:-}"
  local stamp="$pkg $ldflags"
  [[ -x "$bindir/$name" && "$(cat "$bindir/.$name.stamp" 2>/dev/null)" == "$stamp" ]] && return 0
  go_env
  local t0; t0="$(now)"
  log "installing $pkg"
  mkdir -p "$bindir"
  (cd "$STRATA_CACHE" && GOBIN="$bindir.tmp.$$" "$GO" install -trimpath -ldflags="$ldflags" "$pkg") \
    >"$bindir/../build.log" 2>&1 8>&- || { tail -30 "$bindir/../build.log" >&2; rm -rf "$bindir.tmp.$$"; die "go install $pkg failed"; }
  mv "$bindir.tmp.$$/$name" "$bindir/$name"; rm -rf "$bindir.tmp.$$"
  echo "$stamp" >"$bindir/.$name.stamp"
  log "installed $name in $(elapsed "$t0")"
}

# kwok needs Stage objects describing the node/pod lifecycle. Take the
# upstream "fast" stages (+ lease based node heartbeat) from kwok's own module
# source, exactly as kwokctl does.
kwok_stages() {
  local out="$STRATA_CACHE/kwok/$KWOK_VERSION/stages.yaml"
  [[ -s "$out" ]] && return 0
  go_env
  local src f
  src="$(cd "$STRATA_CACHE" && "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src/kustomize/stage" ]] || die "kwok module source not found for $KWOK_VERSION"
  : >"$out.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    { echo "---"; cat "$src/kustomize/stage/$f"; } >>"$out.tmp"
  done
  mv "$out.tmp" "$out"
}

build_all() {
  mkdir -p "$STRATA_CACHE/kube/$K8S_VERSION"
  exec 8>"$STRATA_CACHE/.control-plane-build.lock"
  flock 8
  build_kube
  go_install_to "$KWOK_BIN_DIR" kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  kwok_stages
  go_install_to "$HELM_BIN_DIR" helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  exec 8>&-
  mkdir -p "$BIN_DIR"
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
    ln -sfn "$KUBE_BIN_DIR/$b" "$BIN_DIR/$b"
  done
  ln -sfn "$KWOK_BIN_DIR/kwok" "$BIN_DIR/kwok"
  ln -sfn "$HELM_BIN_DIR/helm" "$BIN_DIR/helm"
}

# ---------------------------------------------------------------------------
# Certificates and kubeconfigs (openssl)
# ---------------------------------------------------------------------------

# gen_cert <name> <subject> <extensions>
gen_cert() {
  local name="$1" subj="$2" ext="$3" ca="${CA_NAME:-ca}"
  [[ -s "$PKI/$name.crt" && -s "$PKI/$name.key" ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# gen_kubeconfig <file> <cert name> <user>
gen_kubeconfig() {
  local file="$1" cert="$2" user="$3"
  [[ -s "$file" ]] && return 0
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: strata
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$cert.crt")
    client-key-data: $(base64 -w0 <"$PKI/$cert.key")
contexts:
- name: strata
  context:
    cluster: strata
    user: $user
    namespace: default
current-context: strata
EOF
  chmod 600 "$file.tmp"; mv "$file.tmp" "$file"
}

gen_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  if [[ ! -s "$PKI/ca.crt" || ! -s "$PKI/ca.key" ]]; then
    log "generating certificates in $PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
      -days 3650 -sha256 -subj "/CN=strata-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    # Everything signed by an older CA is now invalid.
    rm -f "$PKI"/{apiserver,admin,controller-manager,scheduler}.{crt,key} "$STATE"/*.kubeconfig
  fi
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  gen_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
  gen_cert admin "/O=system:masters/CN=strata-admin" "$client"
  gen_cert controller-manager "/CN=system:kube-controller-manager" "$client"
  gen_cert scheduler "/CN=system:kube-scheduler" "$client"
  # Front proxy (requestheader) CA: lets the controller-manager/scheduler
  # authenticate delegated requests and aggregated API servers work.
  if [[ ! -s "$PKI/front-proxy-ca.crt" || ! -s "$PKI/front-proxy-ca.key" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-ca.key" -out "$PKI/front-proxy-ca.crt" \
      -days 3650 -sha256 -subj "/CN=strata-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    rm -f "$PKI"/front-proxy-client.{crt,key}
  fi
  if [[ ! -s "$PKI/front-proxy-client.crt" ]]; then
    CA_NAME=front-proxy-ca gen_cert front-proxy-client "/CN=front-proxy-client" "$client"
  fi
  if [[ ! -s "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  gen_kubeconfig "$KUBECONFIG_ADMIN" admin strata-admin
  gen_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
  gen_kubeconfig "$STATE/scheduler.kubeconfig" scheduler system:kube-scheduler
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# Prints the pid of a component if it is running and was started by us
# (its command line mentions our state dir), else nothing.
component_pid() {
  local name="$1" pid
  pid="$(cat "$RUN/$name.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE"; then
    echo "$pid"
  fi
}

component_args() {
  case "$1" in
    etcd) echo \
      --name=strata --data-dir="$STATE/etcd" \
      --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="strata=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync=true --log-level=warn ;;
    kube-apiserver) echo \
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
      --cert-dir="$PKI/apiserver-generated" \
      --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
      --client-ca-file="$PKI/ca.crt" \
      --service-account-key-file="$PKI/sa.pub" \
      --service-account-signing-key-file="$PKI/sa.key" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --authorization-mode=Node,RBAC \
      --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
      --requestheader-allowed-names=front-proxy-client \
      --requestheader-username-headers=X-Remote-User \
      --requestheader-group-headers=X-Remote-Group \
      --requestheader-extra-headers-prefix=X-Remote-Extra- \
      --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
      --proxy-client-key-file="$PKI/front-proxy-client.key" \
      --allow-privileged=true \
      --endpoint-reconciler-type=none \
      --profiling=false ;;
    kube-controller-manager) echo \
      --kubeconfig="$STATE/controller-manager.kubeconfig" \
      --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
      --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$PKI/kcm-generated" \
      --service-account-private-key-file="$PKI/sa.key" \
      --root-ca-file="$PKI/ca.crt" \
      --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
      --use-service-account-credentials=true \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --cluster-name=strata --leader-elect=false --profiling=false \
      --kube-api-qps=300 --kube-api-burst=600 \
      --concurrent-deployment-syncs=20 --concurrent-replicaset-syncs=20 ;;
    kube-scheduler) echo \
      --kubeconfig="$STATE/scheduler.kubeconfig" \
      --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
      --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$PKI/scheduler-generated" \
      --leader-elect=false --profiling=false --kube-api-qps=300 --kube-api-burst=600 ;;
    kwok) echo \
      --kubeconfig="$KUBECONFIG_ADMIN" \
      --config="$STRATA_CACHE/kwok/$KWOK_VERSION/stages.yaml" \
      --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-lease-duration-seconds=40 \
      --cidr="$POD_CIDR" --node-ip=127.0.0.1 \
      --server-address="127.0.0.1:$KWOK_PORT" ;;
  esac
}

# CPU priority. On one small machine etcd and the apiserver compete for the same cores as their
# own clients (controller-manager, scheduler, kwok, the operator, the tests); a real cluster
# gives them nodes of their own. Letting them go first keeps every client's requests moving:
# 1,000 AgentDeployments Ready in 65-70 s instead of 78-88 s on 2 cores. Lowering a niceness
# needs root; otherwise everything runs at 0.
component_nice() {
  if ((EUID != 0)); then echo 0; return; fi
  case "$1" in
    etcd) echo -10 ;;
    kube-apiserver) echo -5 ;;
    *) echo 0 ;;
  esac
}

# Components running with other flags (or GOGC/GOMEMLIMIT, or niceness) than this script would
# give them (the script changed since they were started) are stopped, to be started again.
component_outdated() {
  local name="$1" pid want have
  pid="$(component_pid "$name")"
  [[ -n "$pid" ]] || return 1
  # shellcheck disable=SC2046,SC2116
  want="$(echo "$BIN_DIR/$name" $(component_args "$name"))"
  have="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
  [[ "${have% }" != "$want" ]] && return 0
  local environ
  environ="$(tr '\0' '\n' <"/proc/$pid/environ")"
  ! grep -qx "GOGC=$CONTROL_PLANE_GOGC" <<<"$environ" || ! grep -qx "GOMEMLIMIT=$CONTROL_PLANE_GOMEMLIMIT" <<<"$environ" ||
    [[ "$(ps -o ni= -p "$pid" | tr -d ' ')" != "$(component_nice "$name")" ]]
}

restart_changed() {
  local name
  for name in "${COMPONENTS[@]}"; do
    if component_outdated "$name"; then
      log "$name runs with outdated flags: restarting it"
      stop_components "$name"
    fi
  done
}

start_component() {
  local name="$1" pid
  pid="$(component_pid "$name")"
  if [[ -n "$pid" ]]; then return 0; fi
  # keep logs bounded: one previous generation once over 50 MB
  if [[ -f "$LOGS/$name.log" ]] && (($(stat -c %s "$LOGS/$name.log") > 50 * 1024 * 1024)); then
    mv -f "$LOGS/$name.log" "$LOGS/$name.log.1"
  fi
  # (fd 8/9 are our lock files: the daemons must not inherit them)
  # GOGC: cores are few and memory is plentiful here; the apiserver spent ~20% of its CPU in
  # the garbage collector at the default of 100 during a burst of 1,000 AgentDeployments
  # (time to Ready 132 s -> 108 s at 400). GOMEMLIMIT keeps each heap soft-capped all the same.
  # shellcheck disable=SC2046  # component_args is one word per flag
  GOGC="$CONTROL_PLANE_GOGC" GOMEMLIMIT="$CONTROL_PLANE_GOMEMLIMIT" \
    setsid nice -n "$(component_nice "$name")" "$BIN_DIR/$name" $(component_args "$name") >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
  wait_for_exec "$name" $!
  log "started $name (pid $!, log $LOGS/$name.log)"
  STARTED+=("$name")
}

# wait_for_exec <name> <pid>: until the background job has become the component. Right after
# `&` the pid is still a copy of this shell (then setsid, then nice), whose command line
# component_pid does not recognise, so a health check in that window took a live component
# for a dead one (CI failed once so: "kwok exited" in the second it started).
wait_for_exec() {
  local name="$1" pid="$2" i
  for ((i = 0; i < 100; i++)); do
    [[ -n "$(component_pid "$name")" ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 0  # it died: check_alive reports it with its log
    sleep 0.05
  done
}

# stop_components <name...>: SIGTERM them all at once, wait (then SIGKILL).
stop_components() {
  local name pid i alive
  local -A pids=()
  for name in "$@"; do
    pid="$(component_pid "$name")"
    if [[ -n "$pid" ]]; then pids[$name]="$pid"; kill -TERM "$pid" 2>/dev/null || true
    else rm -f "$RUN/$name.pid"; fi
  done
  for ((i = 0; i < 150; i++)); do
    alive=0
    for name in "${!pids[@]}"; do kill -0 "${pids[$name]}" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for name in "${!pids[@]}"; do
    if kill -0 "${pids[$name]}" 2>/dev/null; then
      log "$name (pid ${pids[$name]}) did not stop in 15s, killing"
      kill -KILL "${pids[$name]}" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
    log "stopped $name (pid ${pids[$name]})"
  done
}

# wait_for <description> <timeout seconds> <command...>
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for $what (logs in $LOGS)"
    fi
    check_alive
    sleep 0.3
  done
}

# A component we started has died: fail fast with its log.
check_alive() {
  local name
  for name in "${STARTED[@]}"; do
    if [[ -z "$(component_pid "$name")" ]]; then
      tail -25 "$LOGS/$name.log" >&2 || true
      die "$name exited (log: $LOGS/$name.log)"
    fi
  done
}

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" "$@"; }

# (the *_healthy/_ready checks are called through wait_for)
# shellcheck disable=SC2329
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() { kubectl_admin get --raw /readyz; }
default_sa_exists() { kubectl_admin -n default get serviceaccount default; }
# shellcheck disable=SC2329
https_healthz() { curl -fsSk "https://127.0.0.1:$1/healthz"; }

fake_node_names() {
  local i
  for ((i = 0; i < FAKE_NODES; i++)); do echo "kwok-node-$i"; done
}

fake_nodes_manifest() {
  local i
  for ((i = 0; i < FAKE_NODES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    node-role.kubernetes.io/agent: ""
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
}

# Ready, and held by the running kwok (it renews their leases).
fake_nodes_ready() {
  local want="$FAKE_NODES" got
  # shellcheck disable=SC2046
  kubectl_admin -n kube-node-lease get lease $(fake_node_names) >/dev/null 2>&1 || return 1
  got="$(kubectl_admin get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')"
  ((got >= want))
}

all_healthy() {
  local name
  for name in "${COMPONENTS[@]}"; do
    [[ -n "$(component_pid "$name")" ]] || return 1
    ! component_outdated "$name" || return 1
  done
  apiserver_ready >/dev/null 2>&1 && default_sa_exists >/dev/null 2>&1 && fake_nodes_ready 2>/dev/null
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

# Serialise up/down (e.g. parallel `make test` runs). Never inherited by the
# daemons (see start_component).
take_lock() {
  exec 9>"$RUN/up.lock"
  flock -w 600 9 || die "another hack/control-plane.sh holds $RUN/up.lock"
}

cmd_up() {
  local t0; t0="$(now)"
  build_all
  mkdir -p "$STATE" "$LOGS" "$RUN"
  take_lock
  if all_healthy; then
    log "already up and healthy ($(elapsed "$t0")); $(cmd_env | tr '\n' ' ')"
    return 0
  fi
  gen_pki
  STARTED=()
  # A failed `up` stops what it started (never what was running before it), so a half-started
  # control plane does not hold the ports of the next run.
  trap stop_started_on_failure EXIT
  restart_changed

  start_component etcd
  wait_for etcd 60 etcd_healthy
  start_component kube-apiserver
  wait_for "kube-apiserver /readyz" "$WAIT_TIMEOUT" apiserver_ready
  log "apiserver ready after $(elapsed "$t0")"
  start_component kube-controller-manager
  start_component kube-scheduler
  if [[ -z "$(component_pid kwok)" ]]; then
    # A new kwok only takes a node over once the previous kwok's node lease
    # has expired (40s): drop the stale leases so it takes over at once.
    # shellcheck disable=SC2046  # one argument per node name
    kubectl_admin -n kube-node-lease delete lease --ignore-not-found --wait=false $(fake_node_names) >/dev/null
  fi
  start_component kwok
  wait_for "kube-controller-manager /healthz" "$WAIT_TIMEOUT" https_healthz "$KCM_PORT"
  wait_for "kube-scheduler /healthz" "$WAIT_TIMEOUT" https_healthz "$SCHEDULER_PORT"
  fake_nodes_manifest | kubectl_admin apply -f - >/dev/null
  wait_for "serviceaccount default/default" "$WAIT_TIMEOUT" default_sa_exists
  wait_for "$FAKE_NODES Ready kwok node(s)" "$WAIT_TIMEOUT" fake_nodes_ready
  log "control plane up in $(elapsed "$t0") (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
  # shellcheck disable=SC2016  # the $(...) is for the reader's shell
  log 'use it with: eval "$('"$0"' env)"'
}

# shellcheck disable=SC2329  # cmd_up's EXIT trap
stop_started_on_failure() {
  local rc=$? i names=()
  ((rc != 0 && ${#STARTED[@]} > 0)) || return 0
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do names+=("${STARTED[i]}"); done
  log "up failed: stopping what it started (${names[*]})"
  stop_components "${names[@]}" || true
}

cmd_down() {
  mkdir -p "$RUN"
  take_lock
  # Clients of the apiserver first, etcd last.
  stop_components kwok kube-scheduler kube-controller-manager
  stop_components kube-apiserver
  stop_components etcd
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_ADMIN"
  # shellcheck disable=SC2016  # $PATH is expanded by the shell that evals this
  printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
}

cmd_status() {
  local name pid rc=0
  for name in "${COMPONENTS[@]}"; do
    pid="$(component_pid "$name")"
    if [[ -n "$pid" ]]; then printf '%-24s running (pid %s)\n' "$name" "$pid"
    else printf '%-24s stopped\n' "$name"; rc=1; fi
  done
  if ((rc == 0)) && [[ -x "$BIN_DIR/kubectl" ]]; then
    kubectl_admin get nodes -o wide || rc=1
  fi
  return "$rc"
}

cmd_clean() {
  cmd_down
  rm -rf "$STATE"
  log "removed $STATE"
}

# Everything is parsed before anything runs (safe against edits of this file
# while it runs).
main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    build) build_all ;;
    clean) cmd_clean ;;
    *) echo "usage: $0 up|down|env|status|build|clean" >&2; exit 2 ;;
  esac
}
main "$@"; exit $?
