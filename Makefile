# Binance Tick Store. `make run` starts it in Docker, `make test` tests it.

HTTP_PORT ?= 8080
BIN       ?= bin/server
# Docker Compose v2 ("docker compose") if present, else the v1 binary.
COMPOSE   ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: build run stop status logs test fake

## build: compile the server into bin/server (pure Go, no cgo)
build:
	CGO_ENABLED=0 go build -trimpath -o $(BIN) ./cmd/server

## run: build the image and start the store in the background
run:
	$(COMPOSE) up --build -d

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

## fake: run the fake exchange on 127.0.0.1:9443, for trying the store offline
fake:
	go run ./cmd/fakebinance
