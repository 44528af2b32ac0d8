#!/usr/bin/env bash
# Measures the demo's resident memory: builds klagg, runs `klagg demo` for
# DURATION (default 60m) and prints VmRSS every INTERVAL seconds (default
# 60), then the largest value seen, overall and after the first ten minutes.
#
#   scripts/demo-memory.sh [DURATION] [INTERVAL] [extra demo flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60m}
interval=${2:-60}
shift $(( $# > 2 ? 2 : $# ))
bin=$(mktemp -d)/klagg
go build -o "$bin" ./cmd/klagg
"$bin" demo --http "" --duration "$duration" "$@" >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
start=$(date +%s)
peak=0
peak_all=0
while kill -0 "$pid" 2>/dev/null; do
	sleep "$interval"
	rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
	[ -n "$rss" ] || break
	elapsed=$(( $(date +%s) - start ))
	printf '%6ds  VmRSS %7d kB\n' "$elapsed" "$rss"
	if [ "$rss" -gt "$peak_all" ]; then
		peak_all=$rss
	fi
	if [ "$elapsed" -ge 600 ] && [ "$rss" -gt "$peak" ]; then
		peak=$rss
	fi
done
printf 'peak VmRSS: %d kB (%d MiB)\n' "$peak_all" $(( peak_all / 1024 ))
if [ "$peak" -gt 0 ]; then
	printf 'peak VmRSS after the first 10 minutes: %d kB (%d MiB)\n' "$peak" $(( peak / 1024 ))
fi
