# Captain's build. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/captain-cd/captain/buildinfo.version=$(VERSION)
BUF := go tool -modfile=protocol/tools.mod buf
BINARIES := captaind=./coordinator/cmd/captaind captain-agent=./agent/cmd/captain-agent captain=./ops/cmd/captain
# How many inputs each fuzz target tries in `make fuzz` (part of `make test`). A count, not a
# duration: with a duration, Go 1.26's fuzz coordinator can fail a clean run with "context
# deadline exceeded" when its deadline races a busy worker (golang/go#75804, fixed in Go 1.27).
# Targets in FUZZ_SLOW write real files per input and get FUZZTIME_SLOW instead.
FUZZTIME ?= 100000x
FUZZTIME_SLOW ?= 3000x
FUZZ_SLOW := FuzzExtract

.PHONY: help build demo generate check-generate lint test test-unit test-integration fuzz bench ui-screenshot clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/captaind, bin/captain-agent and bin/captain, stamped with the git version
	@mkdir -p bin
	@for b in $(BINARIES); do \
		echo "go build -o bin/$${b%%=*} $${b#*=}"; \
		CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/$${b%%=*} $${b#*=}; \
	done

demo: build ## run `bin/captain dev`: 3 coordinators, versitygw, 8 agents, three releases through a pipeline, until Ctrl-C
	bin/captain dev $(DEMOFLAGS)

generate: ## regenerate protocol/gen from the .proto sources (buf + protoc-gen-go + protoc-gen-connect-go via go tool)
	rm -rf protocol/gen
	$(BUF) generate

check-generate: ## fail when protocol/gen differs from what the .proto sources generate
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate -o "$$tmp"; \
	if ! diff -r protocol/gen "$$tmp/protocol/gen" >/dev/null; then \
		diff -r protocol/gen "$$tmp/protocol/gen" | head -20; \
		echo "protocol/gen is out of date or was edited by hand: run 'make generate' and commit the result" >&2; \
		exit 1; \
	fi; echo "protocol/gen is up to date"

lint: ## gofmt, go vet, staticcheck and buf lint
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	go vet ./...
	go tool staticcheck ./...
	$(BUF) lint

test-unit: ## go test -race of every package outside integration/
	go test -race -timeout 20m $$(go list ./... | grep -v '/integration/')

test-integration: ## the multi-process suites in integration/: end to end, systemd, demo, faults, linearizability, web UI (root for namespaces and containers)
	go test -count=1 -timeout 45m ./integration/...

fuzz: ## run every fuzz target (func FuzzXxx in *_test.go) for FUZZTIME inputs each (FUZZTIME_SLOW for FUZZ_SLOW)
	@grep -rlE --include='*_test.go' --exclude-dir=.git '^func Fuzz' . | sort | while read -r f; do \
		for n in $$(grep -hoE '^func Fuzz[A-Za-z0-9_]+' "$$f" | cut -c6-); do \
			d=./$$(dirname "$${f#./}"); budget=$(FUZZTIME); \
			case " $(FUZZ_SLOW) " in *" $$n "*) budget=$(FUZZTIME_SLOW);; esac; \
			echo "fuzz $$n in $$d for $$budget"; \
			go test -run '^$$' -fuzz "^$$n$$" -fuzztime $$budget "$$d"; \
		done; \
	done

test: lint check-generate test-unit fuzz $(if $(SHORT),,test-integration) ## everything CI runs: lint, check-generate, tests with -race, brief fuzzing, and test-integration unless SHORT=1

bench: ## measure DESIGN §10's targets on real 3-node clusters (BENCH_SCALE=0.1 for a quick run, BENCH_ONLY=heartbeat,rollback to pick, BENCH_PROFILE=DIR for leader CPU profiles); writes integration/bench/results.json
	CAPTAIN_BENCH=1 BENCH_SCALE=$${BENCH_SCALE:-1} go test -run '^TestBench$$' -v -count=1 -timeout 15m ./integration/bench

ui-screenshot: ## redraw ops/docs/ui-pipeline.png, the README's picture of the pipeline page, from a real cluster
	CAPTAIN_UI_SCREENSHOT=$(CURDIR)/ops/docs/ui-pipeline.png go test -run '^TestREADMEScreenshot$$' -count=1 ./integration/ui

clean: ## remove build output
	rm -rf bin
