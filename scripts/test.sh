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

echo "== Python test venv from PyPI: chdb (embedded ClickHouse), ccxt, freqtrade"
# Pinned (integration/testdata/requirements.txt): the tests prove the
# repository's SQL on this ClickHouse, and klagg serve to these Binance
# clients. The venv is rebuilt when the pins change.
reqs=integration/testdata/requirements.txt
venv=$repo/.cache/chdb-$(sha256sum "$reqs" | cut -c1-12)
if ! "$venv/bin/python" -c "import chdb" 2>/dev/null; then
	rm -rf "$venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
fi
export KLAGG_TEST_PYTHON=$venv/bin/python KLAGG_TEST_FREQTRADE=$venv/bin/freqtrade
"$KLAGG_TEST_PYTHON" -c 'import chdb; print("chdb", chdb.__version__, "- ClickHouse", chdb.query("SELECT version()", "TSV").data().strip())'
"$KLAGG_TEST_PYTHON" -c 'import ccxt; print("ccxt", ccxt.__version__)'
"$KLAGG_TEST_FREQTRADE" --version | tail -1

echo "== chromium, prometheus and iproute2 (Debian's packages) for the chart page, dashboard and network-fault tests"
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
# ip(8) makes the network namespace of the member cut off from the cluster.
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export KLAGG_TEST_CHROMIUM KLAGG_TEST_PROMETHEUS
KLAGG_TEST_CHROMIUM=$(command -v chromium)
KLAGG_TEST_PROMETHEUS=$(command -v prometheus)
chromium --version 2>/dev/null # its wrapper script complains on some machines
prometheus --version 2>&1 | head -1
# Screenshots and other files for a person to look at.
export KLAGG_TEST_ARTIFACTS=$repo/.cache/test-artifacts

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
