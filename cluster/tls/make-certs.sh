#!/usr/bin/env bash
# Make a private CA and one certificate for the scheduler, workers and clients
# of ONE Dask cluster (mutual TLS: every party shows a certificate the CA signed).
#
#   cluster/tls/make-certs.sh DIR [HOST_OR_IP ...]
#
# DIR gets ca.pem, ca-key.pem, node.pem, node-key.pem. The hosts (default:
# 127.0.0.1 localhost scheduler) go into the certificate's subjectAltName.
# Keep ca-key.pem off the cluster; give node.pem/node-key.pem mode 600.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [HOST_OR_IP ...]}
shift || true
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(127.0.0.1 localhost scheduler)
san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "/CN=svcca-dask cluster CA" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=svcca-dask node" \
  -keyout node-key.pem -out node.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" > node.ext
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
  -extfile node.ext -out node.pem 2>/dev/null
rm -f node.csr node.ext ca.srl
chmod 644 ca.pem node.pem
echo "wrote $dir/ca.pem $dir/node.pem $dir/node-key.pem (SAN: $san)"
