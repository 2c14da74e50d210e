# Binance Tick Store. `make run` starts it in Docker, `make test` tests it.

HTTP_PORT ?= 8080
BIN       ?= bin/server
# Docker Compose v2 ("docker compose") if present, else the v1 binary.
COMPOSE   ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: build run stop status logs test fake symbols symbol-add symbol-enable symbol-disable symbol-remove backup export \
	bench bench-idle reliability soak

## build: compile the server into bin/server (pure Go, no cgo)
build:
	CGO_ENABLED=0 go build -trimpath -o $(BIN) ./cmd/server

## run: build the image and start the store in the background, as you
## (the container runs with your uid and gid, so .data/ stays yours)
run:
	mkdir -p .data
	HOST_UID=$$(id -u) HOST_GID=$$(id -g) $(COMPOSE) up --build -d

## stop: stop and remove the container (the data stays in .data/)
stop:
	$(COMPOSE) down

## status: print the status page, or say that the store is not running
status:
	@curl -s --max-time 5 http://localhost:$(HTTP_PORT)/status || \
		printf 'Binance Tick Store\n\nStatus:     stopped (connection refused)\n'

## logs: follow the container's logs
logs:
	$(COMPOSE) logs -f

## test: vet and run every test with the race detector
test:
	go vet ./...
	go test -race ./...

# Symbol management and backups: plain SQL through sqlite3, the local one if
# installed, else the one in the running container. SYMBOL, DAY and OUT are
# read from the environment by the script, never pasted into a command line.
OPS = scripts/tickstore.sh

## symbols: list symbol_settings
symbols:
	@$(OPS) list

## symbol-add SYMBOL=BTCUSDT: add (or re-enable) a symbol
symbol-add:
	@$(OPS) add "$$SYMBOL"

## symbol-enable SYMBOL=BTCUSDT / symbol-disable SYMBOL=BTCUSDT: resume or pause
symbol-enable:
	@$(OPS) enable "$$SYMBOL"
symbol-disable:
	@$(OPS) disable "$$SYMBOL"

## symbol-remove SYMBOL=BTCUSDT: stop recording it (its table and ticks stay)
symbol-remove:
	@$(OPS) remove "$$SYMBOL"

## backup [OUT=file]: consistent copy of the database while the store runs
backup:
	@$(OPS) backup $${OUT:+"$$OUT"}

## export SYMBOL=BTCUSDT DAY=2026-05-01 [OUT=file.csv]: one UTC day as CSV
export:
	@$(OPS) export "$$SYMBOL" "$$DAY" $${OUT:+"$$OUT"}

## bench: hot-function benchmarks, then the end-to-end figures of docs/BENCHMARKS.md (~10 min)
bench:
	go test -run '^$$' -bench . -benchtime 2s -count 3 ./internal/database/ ./internal/aggtrade/
	go run ./cmd/bench all

## bench-idle: RSS with 1,000 idle symbols (~16 min: the connection-attempt limit paces it)
bench-idle:
	go run ./cmd/bench idle

## reliability: every fault and hostile-input scenario at full length (root for the disk-full case)
reliability:
	RELIABILITY_FULL=1 go test -race -count=1 -v -timeout 60m ./test/reliability/

SOAK ?= 30m
## soak: $(SOAK) at 2,000 ticks/s with random faults and SIGKILL restarts (not in CI)
soak:
	RELIABILITY_SOAK=$(SOAK) go test -race -count=1 -v -timeout 90m -run '^TestSoak$$' ./test/reliability/

## fake: run the fake exchange on 127.0.0.1:9443, for trying the store offline
fake:
	go run ./cmd/fakebinance
