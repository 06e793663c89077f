#!/bin/sh
# exchange-broker.sh NODE_ID: start one broker of the compose exchange cluster (apache/kafka
# image, its user appuser). Combined broker and controller in a static 3-voter KRaft quorum:
#
#   EXTERNAL   :9092  SASL_SSL, SCRAM-SHA-512: the agencies' nodes and the operator (admin)
#   BROKER     :9093  SSL, mutual TLS: broker to broker (principal User:kafka-N, from the CN)
#   CONTROLLER :9094  SSL, mutual TLS: the KRaft quorum (SCRAM cannot serve a controller)
#
# StandardAuthorizer denies what no ACL allows; the super users are the brokers and admin. The
# SCRAM users (admin and one per agency, passwords made by federation-init in /pki/scram) are
# written when the storage is formatted, before the first start: KRaft has no other way to
# bootstrap them. Replication 3 and min ISR 2 for every topic and internal topic.
set -eu

id=${1:?usage: exchange-broker.sh NODE_ID}
host="kafka-$id"
# The container's paths; the variables let the same script run three brokers on one host for a
# check without a container engine (listeners bound to a loopback address each).
pki=${FXGW_PKI:-/pki}
data=${FXGW_BROKER_DATA:-/var/lib/kafka/data}
props=${FXGW_BROKER_PROPS:-/tmp/server.properties}
client_props=${FXGW_BROKER_CLIENT_PROPS:-/tmp/client.properties}
bind=${FXGW_BROKER_BIND:-}
kafka_bin=${KAFKA_BIN:-/opt/kafka/bin}

cat >"$props" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=1@kafka-1:9094,2@kafka-2:9094,3@kafka-3:9094
listeners=EXTERNAL://$bind:9092,BROKER://$bind:9093,CONTROLLER://$bind:9094
advertised.listeners=EXTERNAL://$host:9092,BROKER://$host:9093
listener.security.protocol.map=EXTERNAL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=BROKER
log.dirs=$data
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:kafka-1;User:kafka-2;User:kafka-3;User:admin
ssl.keystore.type=PEM
ssl.keystore.location=$pki/$host.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$pki/ca.pem
listener.name.broker.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
listener.name.external.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.external.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
PROPS

# A client config for this broker's own tools (the healthcheck): its certificate, a super user.
cat >"$client_props" <<PROPS
security.protocol=SSL
ssl.keystore.type=PEM
ssl.keystore.location=$pki/$host.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$pki/ca.pem
PROPS

if [ ! -f "$data/meta.properties" ]; then
    set --
    for file in "$pki"/scram/*; do
        set -- "$@" --add-scram "SCRAM-SHA-512=[name=$(basename "$file"),password=$(cat "$file")]"
    done
    "$kafka_bin/kafka-storage.sh" format --ignore-formatted \
        --cluster-id "$(cat "$pki/cluster.id")" -c "$props" "$@"
fi
exec "$kafka_bin/kafka-server-start.sh" "$props"
