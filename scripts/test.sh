#!/usr/bin/env bash
# The project's one test command (README, `make test`, .ci/run): format and
# vet checks, then every package's tests with the race detector, the
# integration tests against a real Apache Kafka broker that this script
# fetches (Maven), formats, starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

echo "== gofmt"
out=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi
echo "== go vet"
go vet ./...

echo "== Apache Kafka broker"
kafka_dir=$(mktemp -d "${TMPDIR:-/tmp}/klagg-kafka.XXXXXX")
cleanup() {
	bash "$repo/scripts/kafka.sh" stop "$kafka_dir" || true
	rm -rf "$kafka_dir"
}
trap cleanup EXIT
export KLAGG_TEST_BROKERS
KLAGG_TEST_BROKERS=$(bash scripts/kafka.sh start "$kafka_dir")
export KLAGG_TEST_KAFKA_DIR=$kafka_dir
export KLAGG_TEST_KAFKA_SCRIPT=$repo/scripts/kafka.sh
export KLAGG_TEST_BROKER_NAME="Apache Kafka ${KAFKA_VERSION:-4.4.0}"
echo "integration tests run against $KLAGG_TEST_BROKER_NAME at $KLAGG_TEST_BROKERS"

echo "== go test -race -shuffle=on ./..."
go test -race -shuffle=on -timeout 40m ./...
