# `make test` is the README's test command and what CI runs.
GO ?= go

.PHONY: test ci unit bench fuzz fmt vet

test:
	bash scripts/test.sh

ci: test

unit: fmt vet
	$(GO) test -race -shuffle=on ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Engine and codec benchmarks; compare runs with benchstat.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./schema ./processor/engine

fuzz:
	$(GO) test ./schema -run '^$$' -fuzz '^FuzzDecodeBinanceJSON$$' -fuzztime 3m
	$(GO) test ./schema -run '^$$' -fuzz '^FuzzDecodeAvroTrade$$' -fuzztime 3m
	$(GO) test ./schema -run '^$$' -fuzz '^FuzzDecodeState$$' -fuzztime 3m
	$(GO) test ./processor -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime 3m
