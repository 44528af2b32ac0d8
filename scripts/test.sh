#!/usr/bin/env bash
# The project's one test command (README, `make test`, .ci/run): format and
# vet checks, then every package's tests with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
out=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== go test -race -shuffle=on ./..."
go test -race -shuffle=on -timeout 30m ./...
