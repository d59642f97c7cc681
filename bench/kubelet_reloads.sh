#!/usr/bin/env bash
# What a real kubelet v1.24 reloads without a restart, measured on ../shared/k8s (node.sh):
#  1. its client CA (authentication.x509.clientCAFile, kubeadm's /etc/kubernetes/pki/ca.crt);
#  2. its client certificate (kubelet-client-current.pem), replaced by one the apiserver refuses;
# Each step replaces the file atomically, watches for 40 s, then restores it (and restarts the kubelet
# where the step needed one to be undone). Prints one line per fact.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); k8s=$here/../../shared/k8s
W=${1:-/tmp/cpki-reloads}; rm -rf "$W"; mkdir -p "$W"
K=$("$k8s/cluster.sh" up "$W/cp" --bootstrap-tokens)
trap '"$k8s/node.sh" down "$W/n1" >/dev/null 2>&1 || true; "$k8s/cluster.sh" down "$W/cp" >/dev/null 2>&1 || true' EXIT
"$k8s/cluster.sh" signer "$W/cp" "$W/cp/hpki/ca.crt" "$W/cp/hpki/ca.key"
TOKEN=$("$k8s/node.sh" token "$K" --auto-approve)
SERVER=$(kubectl --kubeconfig "$K" config view -o jsonpath='{.clusters[0].cluster.server}')
"$k8s/node.sh" up "$W/n1" n1 127.0.1.41 "$SERVER" "$W/cp/hpki/ca.crt" --bootstrap-token "$TOKEN" >/dev/null
for c in $(kubectl --kubeconfig "$K" get csr -o name); do kubectl --kubeconfig "$K" certificate approve "$c" >/dev/null 2>&1 || true; done
R=$W/n1/root
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/other.key" -out "$W/other.crt" \
  -days 1 -subj /CN=other-ca 2>/dev/null
healthz() { kubectl --kubeconfig "$K" get --raw /api/v1/nodes/n1/proxy/healthz >/dev/null 2>&1 && echo ok || echo refused; }
ready() { kubectl --kubeconfig "$K" get node n1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; }
swap() { cp "$2" "$1.new"; mv -f "$1.new" "$1"; }
sleep 5
echo "before: proxy/healthz $(healthz), Ready $(ready)"

cp "$R/etc/kubernetes/pki/ca.crt" "$W/ca.crt.orig"
swap "$R/etc/kubernetes/pki/ca.crt" "$W/other.crt"
for i in $(seq 40); do [ "$(healthz)" = refused ] && break; sleep 1; done
echo "1. clientCAFile replaced by another CA: proxy/healthz $(healthz) after ${i}s (refused = reloaded)"
swap "$R/etc/kubernetes/pki/ca.crt" "$W/ca.crt.orig"
for i in $(seq 40); do [ "$(healthz)" = ok ] && break; sleep 1; done
echo "   restored: proxy/healthz $(healthz) after ${i}s"

pem=$R/var/lib/kubelet/pki/kubelet-client-current.pem
target=$R/var/lib/kubelet/pki/$(basename "$(readlink "$pem")")
cp "$target" "$W/client.orig"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/bad.key" -out "$W/bad.crt" \
  -days 1 -subj "/O=system:nodes/CN=system:node:n1" 2>/dev/null
cat "$W/bad.crt" "$W/bad.key" > "$W/bad.pem"
swap "$target" "$W/bad.pem"
sleep 30  # three node-status updates (every 10 s): each would be refused if the kubelet used the new file
echo "2. client certificate replaced by one the apiserver refuses: Ready $(ready) after 30s;" \
  "$(grep -c -i unauthorized "$W/n1/kubelet.log" || true) Unauthorized lines in the kubelet's log (0 = not reloaded)"
swap "$target" "$W/client.orig"
