# Binance Tick Store. `make run` starts it in Docker; `make test` tests it.

HTTP_PORT ?= 8080
PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
# Docker Compose v2 ("docker compose") if present, else the v1 binary.
COMPOSE   ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: build run stop status logs install test lock fake bench bench-hub reliability soak \
	symbols symbol-add symbol-enable symbol-disable symbol-remove backup export import

## build: build the Docker image
build:
	$(COMPOSE) build

## run: build the image and start the store in the background, as you
## (the container runs with your uid and gid, so .data/ stays yours)
run:
	mkdir -p .data
	HOST_UID=$$(id -u) HOST_GID=$$(id -g) $(COMPOSE) up --build -d

## stop: stop and remove the container (the data stays in .data/)
stop:
	$(COMPOSE) down

## status: print the status page, or say that the store is not running and fail
## (so that scripts can tell)
status:
	@curl -sf --max-time 5 http://localhost:$(HTTP_PORT)/status || { \
		printf 'Binance Tick Store\n\nStatus:     stopped (connection refused)\n'; exit 1; }

## logs: follow the container's logs
logs:
	$(COMPOSE) logs -f

## install: a local virtualenv in .venv with the pinned runtime and test packages
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	touch $@

## test: lint, then every test (each with a time limit)
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -p no:cacheprovider

## lock: re-pin requirements*.txt from requirements*.in (UPGRADE=1 to take newer releases)
PIP_COMPILE = $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade)
lock: install
	$(PIP_COMPILE) -o requirements.txt requirements.in
	$(PIP_COMPILE) -o requirements-dev.txt requirements-dev.in

## fake: a fake Binance on 127.0.0.1:9443 trading BTCUSDT and ETHUSDT, to try the store offline
## (TLS=1: wss:// and https://, its CA written to .data/fake-ca.pem for SSL_CERT_FILE)
fake: install
	mkdir -p .data
	$(PY) -m tickd.fakebinance --port 9443 --symbols BTCUSDT,ETHUSDT \
		$(if $(TLS),--tls --ca-file .data/fake-ca.pem)

## bench-hub: /status latency and stream health while another program holds the write lock,
## for the store's cooperative wait and for SQLite's busy handler on the hub (~1 min)
bench-hub: install
	PYTHONPATH=. $(PY) tests/bench/hub.py

## bench: the figures of docs/BENCHMARKS.md, peers included, in one run (long; not in CI)
bench: install
	PYTHONPATH=. $(PY) tests/bench/run.py

## reliability: every fault scenario of docs/RELIABILITY.md at full length (long; not in CI)
reliability: install
	RELIABILITY_FULL=1 $(PY) -m pytest -p no:cacheprovider -o timeout=3600 -v -s \
		tests/reliability tests/test_wire.py tests/test_symbols.py tests/test_frames.py \
		tests/test_rest.py tests/test_ledger.py \
		--hypothesis-show-statistics

## soak: 30 minutes at realistic load with random faults (not in CI)
soak: install
	RELIABILITY_SOAK=1800 $(PY) -m pytest -p no:cacheprovider -o timeout=3600 -v \
		tests/reliability/test_soak.py

# Symbol management, backups, exports and the history import: plain SQL through tickd.admin,
# with the local virtualenv if there is one (on DB_PATH, default ./.data/ticks.db), else
# inside the running container (on its database). With neither a virtualenv nor Docker
# Compose they say what to do and fail. Arguments come from the environment (SYMBOL, DAY,
# OUT, FROM, TO, RECHECK) and are passed as single arguments, never pasted into SQL.
NO_ADMIN = printf '%s\n' "no $(PY) and no working Docker Compose ($(COMPOSE)): run 'make install' for a local virtualenv, or 'make run' to start the store in Docker" >&2; exit 1
IN_CONTAINER = { $(COMPOSE) version >/dev/null 2>&1 || { $(NO_ADMIN); }; } && \
	$(COMPOSE) exec -T tick-store python -m tickd.admin
ADMIN = $(if $(wildcard $(PY)),$(PY) -m tickd.admin,$(IN_CONTAINER))

## symbols: list symbol_settings
symbols:
	@$(ADMIN) symbols

## symbol-add SYMBOL=BTCUSDT: add a symbol (or enable it again); warns if Binance
## does not list it
symbol-add:
	@$(ADMIN) add "$$SYMBOL"

## symbol-enable SYMBOL=BTCUSDT / symbol-disable SYMBOL=BTCUSDT: resume or pause
## (ticks traded while paused are not recorded)
symbol-enable:
	@$(ADMIN) enable "$$SYMBOL"
symbol-disable:
	@$(ADMIN) disable "$$SYMBOL"

## symbol-remove SYMBOL=BTCUSDT: stop recording it (its table and ticks stay); a refused
## name is matched exactly as stored
symbol-remove:
	@$(ADMIN) remove "$$SYMBOL"

## backup [OUT=file]: a consistent copy of the database while the store runs
backup:
	@$(ADMIN) backup $${OUT:+"$$OUT"}

## export SYMBOL=BTCUSDT DAY=2026-11-30 [OUT=file.csv]: one UTC day of ticks as CSV
export:
	@$(ADMIN) export "$$SYMBOL" "$$DAY" $${OUT:+"$$OUT"}

## import SYMBOL=BTCUSDT FROM=2025-01-01 [TO=2025-06-30]: every trade of those UTC days (TO
## included; default: up to the ticks the store has streamed) from Binance's public archive,
## then REST; safe beside the running store, and resumable: run it again after a failure.
## RECHECK=1 fetches each stored file's CHECKSUM again and stores a file Binance replaced
import:
	@$(ADMIN) import "$$SYMBOL" "$$FROM" $${TO:+"$$TO"} $$(test "$${RECHECK:-0}" = 1 && echo --recheck)
