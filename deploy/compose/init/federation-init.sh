#!/bin/sh
# federation-init.sh: everything the compose federation needs before its first start, made once
# (a second run finds /federation/.done and does nothing; `docker compose down -v` starts over).
# Runs as root in the fxgw-tools image with the repository mounted read-only at /src, because it
# hands files to two users: the brokers' (appuser, UID 1000 in apache/kafka images) and the
# nodes' (10001). The order:
#
#  1. TLS: a throw-away CA and the brokers' certificates (python -m gateway.dev.tls) -> /pki
#  2. SCRAM passwords for admin and each agency, and the exchange's cluster id -> /pki
#  3. the federation authority key (fxgw keygen --authority) -> /federation, never to a node
#  4. each agency's keys (fxgw keygen --agency) -> that agency's keys volume, 0400, UID 10001;
#     keygen prints the public entry for the trust list
#  5. the trust list from deploy/compose/federation.yaml and those entries, signed
#     (fxgw trust sign) -> trust.yaml + trust.yaml.sig
#  6. each agency's config volume: node.yaml (authority key filled in), its policy, the trust
#     list, the CA; the ops volume likewise for the operator (admin)
#  7. the ACL script (fxgw acls) -> /pki/acls.sh, for the exchange-acls service to run
#
# No private key or password is ever written to the repository: only to the named volumes.
set -eu
umask 077

# The container's paths and users. FXGW_INIT_ROOT puts the volumes' folders under a folder
# instead, and the FXGW_*_UID variables change the owners: tests/unit/test_deploy.py runs the
# script so, without a container. Paths written into files are always the containers'.
root=${FXGW_INIT_ROOT:-}
src=${FXGW_INIT_SRC:-/src}
compose=$src/deploy/compose
kafka_uid=${FXGW_KAFKA_UID:-1000}
node_uid=${FXGW_NODE_UID:-10001}
root_uid=${FXGW_ROOT_UID:-0}
pki=$root/pki
fed=$root/federation
ops=$root/ops
out=$root/out

mkdir -p "$pki" "$fed" "$ops" "$out"  # in the container: the volumes' mount points
if [ -f "$fed"/.done ]; then
    echo "federation-init: done before; 'docker compose down -v' makes a new federation"
    exit 0
fi
if [ -n "$(ls -A "$fed")" ]; then
    echo "federation-init: $fed is half made (an earlier run failed); run" \
        "'docker compose down -v' and start again" >&2
    exit 1
fi
work=$(mktemp -d)

# The agencies, one "ID COUNTRY GROUPS" line each, from federation.yaml.
python - "$compose/federation.yaml" >"$work/agencies" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
for a in spec["agencies"]:
    print(a["id"], a["country"], ",".join(a["groups"]))
PY
agencies=$(cut -d' ' -f1 "$work/agencies" | tr '\n' ' ')

# 1, 2: the exchange cluster's TLS and SCRAM material
python -m gateway.dev.tls --out "$pki" --server kafka-1,kafka-2,kafka-3 >/dev/null
mkdir -p "$pki"/scram
for user in admin $agencies; do
    python -c 'import secrets; print(secrets.token_hex(24))' >"$pki/scram/$user"
done
python -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
    >"$pki"/cluster.id
{
    echo "security.protocol=SASL_SSL"
    echo "sasl.mechanism=SCRAM-SHA-512"
    printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="%s";\n' \
        "$(cat "$pki/scram/admin")"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=/pki/ca.pem"
} >"$pki"/admin.properties

# 3: the authority key, then 4: each agency's keys (keygen prints the public halves)
fxgw keygen --authority --id FED --out "$fed" >"$work/authority.yaml"
while read -r agency country groups; do
    fxgw keygen --agency "$agency" --country "$country" --groups "$groups" --valid-days 365 \
        --out "$out/$agency/keys" >"$work/$agency.entry.yaml"
done <"$work/agencies"

# 5: the trust list, signed by the authority
python - "$compose/federation.yaml" "$work" "$fed"/trust.yaml <<'PY'
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

spec = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
work, out = Path(sys.argv[2]), Path(sys.argv[3])
now = datetime.now(UTC)
stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
entries = []
for agency in spec["agencies"]:
    [entry] = yaml.safe_load((work / f"{agency['id']}.entry.yaml").read_text(encoding="utf-8"))
    entry["roles"] = agency["roles"]
    entry["legal_bases"] = agency["legal_bases"]
    entry["contract_versions"] = agency.get("contract_versions", ["1.0"])
    entries.append(entry)
trust = {
    "federation": spec["federation"],
    "version": 1,
    "issued_at": stamp(now - timedelta(minutes=1)),
    "expires_at": stamp(now + timedelta(days=spec["valid_days"])),
    "agencies": entries,
}
out.write_text(yaml.safe_dump(trust, sort_keys=False), encoding="utf-8")
PY
fxgw trust sign --key "$fed"/FED.authority.key "$fed"/trust.yaml

# 6: the config volumes (public files, root's, world-readable) and the key volumes (10001, 0400)
authority_id=$(python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["authority_keys"][0]["id"])' <"$work/authority.yaml")
authority_public=$(python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["authority_keys"][0]["public"])' <"$work/authority.yaml")
render() { # render TEMPLATE CONFIG_DIR
    mkdir -p "$2"
    sed -e "s|@AUTHORITY_KEY_ID@|$authority_id|" -e "s|@AUTHORITY_PUBLIC_KEY@|$authority_public|" \
        "$1" >"$2/node.yaml"
    cp "$fed"/trust.yaml "$fed"/trust.yaml.sig "$pki"/ca.pem "$2/"
    mkdir -p "$2/keys"  # the mount point of the keys volume inside the read-only config volume
    chown -R "$root_uid:$root_uid" "$2"
    chmod 0755 "$2" "$2/keys"
    chmod 0644 "$2"/*.yaml "$2"/*.sig "$2"/ca.pem
}
for agency in $agencies; do
    lower=$(echo "$agency" | tr '[:upper:]' '[:lower:]')
    render "$compose/$agency/node.yaml" "$out/$agency/config"
    cp "$src/policies/$lower.yaml" "$out/$agency/config/policy.yaml"
    chmod 0644 "$out/$agency/config/policy.yaml"
    cp "$pki/scram/$agency" "$out/$agency/keys/exchange.password"
    chown -R "$node_uid:$node_uid" "$out/$agency/keys"
    chmod 0500 "$out/$agency/keys"
    chmod 0400 "$out/$agency/keys"/*
done
render "$compose/ops/node.yaml" "$ops"
cp "$pki"/scram/admin "$ops"/keys/admin.password
chown -R "$node_uid:$node_uid" "$ops"/keys
chmod 0500 "$ops"/keys
chmod 0400 "$ops"/keys/admin.password

# 7: the ACLs, as kafka-acls.sh calls (run by exchange-acls in the Kafka image)
fxgw acls -c "$ops"/node.yaml --command-config /pki/admin.properties >"$pki"/acls.sh

# $pki belongs to the brokers' user: keys 0400, the rest readable by it alone
chown -R "$kafka_uid:$kafka_uid" "$pki"
chmod 0700 "$pki" "$pki"/scram
chmod 0400 "$pki"/scram/* "$pki"/*.key "$pki"/*.keystore.pem "$pki"/admin.properties "$pki"/acls.sh
chmod 0444 "$pki"/ca.pem "$pki"/kafka-?.pem
touch "$fed"/.done
rm -rf "$work"
echo "federation-init: CA, SCRAM users, keys and a signed trust list for $agencies"
