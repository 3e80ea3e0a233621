#!/usr/bin/env bash
# hack/kind/routes.sh up|down — local `unreachable` routes for the cluster's Service and Pod CIDRs.
#
# Before kube-proxy has programmed its rules, a pod dialling a Service address (10.96.0.1:443)
# goes node -> docker bridge -> the host's default route, i.e. off this machine. With these
# routes the packet is refused locally and the client retries; DNAT inside the node happens
# before routing, so the cluster itself is unaffected. `down` removes exactly these routes.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-up}" in
  up)
    for cidr in "$SERVICE_CIDR" "$POD_CIDR"; do
      ip route replace unreachable "$cidr" || die "cannot add the unreachable route for $cidr (needs root / CAP_NET_ADMIN)"
    done ;;
  down)
    for cidr in "$SERVICE_CIDR" "$POD_CIDR"; do
      ip route show type unreachable | grep -q "^unreachable $cidr" && ip route del unreachable "$cidr"
    done; true ;;
  status) ip route show type unreachable ;;
  *) die "usage: $0 up|down|status" ;;
esac
