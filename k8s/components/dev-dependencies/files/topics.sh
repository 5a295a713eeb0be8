#!/bin/sh
# The kafka-topics job (docker-compose.yml): creates every topic the services use before any
# of them starts, since the broker's auto-create is off. `--if-not-exists` makes a re-run a
# no-op. The list is crates/proto/src/contract.rs's topics plus each consumer's dead-letter
# topic (`<service>.dlq`, crates/platform/src/messaging.rs); scripts/deploy-check.sh checks
# that it matches the source.
set -eu

TOPICS="inventory.commands inventory.events payments.commands payments.events orders.events catalog.events checkout.dlq inventory.dlq payments.dlq"

# The broker's port opens before it answers; retry the first request for a minute.
tries=0
until /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$KAFKA_BOOTSTRAP" --list >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 30 ] || { echo "kafka-topics: broker $KAFKA_BOOTSTRAP does not answer" >&2; exit 1; }
  sleep 2
done
for topic in $TOPICS; do
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
    --topic "$topic" --partitions "$KAFKA_PARTITIONS" --replication-factor 1
done
echo "kafka-topics: $TOPICS"
