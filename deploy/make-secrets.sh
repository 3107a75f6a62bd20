#!/usr/bin/env bash
# Make everything a three-region deployment needs to start, in OUT (default:
# deploy/secrets, which git ignores): a certificate authority, a certificate
# per region (naming the region, as peers check) and one for an operator's
# command line, and the token signing key pair.
#
#   deploy/make-secrets.sh [OUT] [REGION ...]      # regions default to eu-west us-east ap-south
#
# OUT/ca/            ca.crt, ca.key          the authority: keep ca.key off the nodes
# OUT/REGION/        tls.crt, tls.key, ca.crt mounted at /etc/crdtstore/tls in that region
# OUT/operator/      tls.crt, tls.key, ca.crt for crdtstore --tls-ca/--tls-cert/--tls-key
# OUT/auth/          signing.pem, signing.pub.pem: nodes get the .pub.pem only
#
# It never overwrites a file: run it once, then issue more with crdtstore cert
# issue. Tokens are issued when needed:
#   crdtstore token issue --signing-key OUT/auth/signing.pem --subject NAME --role admin
set -euo pipefail

out=${1:-"$(dirname "$0")/secrets"}
shift || true
regions=("$@")
if [ ${#regions[@]} -eq 0 ]; then
  regions=(eu-west us-east ap-south)
fi
crdtstore=${CRDTSTORE:-crdtstore}

"$crdtstore" cert ca --out "$out/ca"
for region in "${regions[@]}"; do
  # The region's name is how peers and compose reach it; localhost lets an
  # operator on the host verify it through a published port.
  "$crdtstore" cert issue --ca "$out/ca" --name "$region" --host localhost --host 127.0.0.1 --out "$out/$region"
done
"$crdtstore" cert issue --ca "$out/ca" --name operator --out "$out/operator"
"$crdtstore" token keygen --out "$out/auth"
