# spokeproxy: build, test, lint, lab and bench.
# Every tool the build runs is pinned here.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO          ?= go
BIN         := bin/spokeproxy
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS     := -s -w -X main.version=$(VERSION)

.PHONY: build test unit lint lab bench prereqs test-prereqs fuzz clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/spokeproxy

# The whole suite: unit, fuzz seed corpora and integration tests against real
# PostgreSQL 15, slapd and toxiproxy, with the race detector.
test: test-prereqs
	$(GO) test -race -count=1 -timeout 15m ./...

# Unit tests only (no real servers): quick feedback while coding.
unit:
	$(GO) test -race -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# A throwaway hub-and-spoke site with spokeproxy in front; Ctrl-C stops it.
lab: prereqs build
	./$(BIN) lab

bench: test-prereqs build
	./bench/run

# Each fuzzer for a short while (FUZZTIME=1m for longer).
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

prereqs:
	@scripts/prereqs

test-prereqs:
	@scripts/prereqs test

clean:
	rm -rf bin
