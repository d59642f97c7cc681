#!/usr/bin/env bash
# The "hard way": the same PKI as `clusterpki render` (3 CAs, 11 leaves, the service-account pair and
# 4 kubeconfigs, in kubeadm's layout) made with one openssl CLI call per step, as the guides do.
# Usage: openssl_pki.sh OUTDIR ecdsa|rsa
set -euo pipefail
out=$1; alg=$2
mkdir -p "$out/pki/etcd"; cd "$out"

genkey() {  # genkey FILE
  if [ "$alg" = rsa ]; then openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
  else openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; fi
  chmod 600 "$1"
}
ca() {  # ca BASENAME CN
  genkey "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign"
}
leaf() {  # leaf BASENAME CA SUBJECT EKU [SANS]
  genkey "$1.key"
  local ext; ext=$(mktemp)
  local ku="digitalSignature"; [ "$alg" = rsa ] && ku="digitalSignature,keyEncipherment"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,%s\nextendedKeyUsage=%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' "$ku" "$4" > "$ext"
  [ -n "${5:-}" ] && echo "subjectAltName=$5" >> "$ext"
  openssl req -new -key "$1.key" -subj "$3" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 365 -extfile "$ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$ext"
}
kubeconfig() {  # kubeconfig FILE USER BASENAME
  cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 pki/ca.crt)
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$3.crt")
    client-key-data: $(base64 -w0 "$3.key")
contexts:
- name: $2@kubernetes
  context: {cluster: kubernetes, user: $2}
current-context: $2@kubernetes
KCFG
  chmod 600 "$1"; rm -f "$3.crt" "$3.key"
}

ca pki/ca kubernetes
ca pki/etcd/ca etcd-ca
ca pki/front-proxy-ca front-proxy-ca
leaf pki/apiserver pki/ca "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1,IP:127.0.0.1"
leaf pki/apiserver-kubelet-client pki/ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
leaf pki/apiserver-etcd-client pki/etcd/ca "/CN=kube-apiserver-etcd-client" clientAuth
leaf pki/front-proxy-client pki/front-proxy-ca "/CN=front-proxy-client" clientAuth
leaf pki/etcd/server pki/etcd/ca "/CN=etcd-0" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1"
leaf pki/etcd/peer pki/etcd/ca "/CN=etcd-0" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1"
leaf pki/etcd/healthcheck-client pki/etcd/ca "/CN=kube-etcd-healthcheck-client" clientAuth
leaf admin pki/ca "/O=system:masters/CN=kubernetes-admin" clientAuth
kubeconfig admin.conf kubernetes-admin admin
leaf scheduler pki/ca "/CN=system:kube-scheduler" clientAuth
kubeconfig scheduler.conf system:kube-scheduler scheduler
leaf controller-manager pki/ca "/CN=system:kube-controller-manager" clientAuth
kubeconfig controller-manager.conf system:kube-controller-manager controller-manager
leaf kube-proxy pki/ca "/CN=system:kube-proxy" clientAuth
kubeconfig kube-proxy.conf system:kube-proxy kube-proxy
genkey pki/sa.key
openssl pkey -in pki/sa.key -pubout -out pki/sa.pub
rm -f pki/*.srl pki/etcd/*.srl
