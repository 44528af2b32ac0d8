#!/usr/bin/env bash
# The README's scaling table: starts a broker (scripts/kafka.sh) unless
# KLAGG_TEST_BROKERS names one, and runs BenchmarkScale: one member per
# guarantee catches up pre-filled backlogs. KLAGG_SCALE lists
# symbols:trades cases (default 2000:1000000,10000:1000000,50000:2000000);
# KLAGG_SCALE_BASELINE names another klagg binary to run beside this build.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [ -z "${KLAGG_TEST_BROKERS:-}" ]; then
	kafka_dir=$(mktemp -d "${TMPDIR:-/tmp}/klagg-kafka.XXXXXX")
	trap 'bash "$repo/scripts/kafka.sh" stop "$kafka_dir" || true; rm -rf "$kafka_dir"' EXIT
	export KLAGG_TEST_BROKERS
	KLAGG_TEST_BROKERS=$(bash scripts/kafka.sh start "$kafka_dir")
fi
go test ./integration -run '^$' -bench Scale -benchtime 1x -timeout 90m
