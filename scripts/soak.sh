#!/usr/bin/env bash
# The soak (not part of the test command): three exactly-once members on a
# three-node cluster, 20,000 trades/s for KLAGG_SOAK_DURATION (default 10m),
# a node bounced every two minutes; prints each member's RSS, the group's
# lag and the commit rate every 10 s, and the oracle check at the end.
# Needs Java 17+ and Maven, as scripts/test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
kafka_dir=$(mktemp -d "${TMPDIR:-/tmp}/klagg-kafka.XXXXXX")
trap 'bash "$repo/scripts/kafka.sh" stop "$kafka_dir" || true; rm -rf "$kafka_dir"' EXIT
# The test package's gate (its other tests are not run here).
KLAGG_TEST_BROKERS=$(bash scripts/kafka.sh start "$kafka_dir")
export KLAGG_TEST_BROKERS KLAGG_TEST_KAFKA_SCRIPT=$repo/scripts/kafka.sh KLAGG_SOAK=1
dur=${KLAGG_SOAK_DURATION:-10m}
go test -count=1 -run '^TestSoak$' -v -timeout "$((${dur%m} + 25))m" ./integration
