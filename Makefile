# kryonix-dagster: `make demo` sets everything up and runs the main job on local defaults;
# `make test` runs the test suite against the real local services.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

# Local defaults for the demo and `make dev`: a loopback S3 stand-in and a Dagster home
# inside the checkout. Any of these set in the environment wins. `make dev` starts the plan
# schedules stopped (KRYONIX_SCHEDULES_RUNNING=false); a deployment's default is running.
export KRYONIX_LOCAL_DIR ?= $(CURDIR)/.kryonix
export KRYONIX_S3_ENDPOINT ?= http://127.0.0.1:9900
export KRYONIX_S3_ACCESS_KEY ?= kryonix-demo
export KRYONIX_S3_SECRET_KEY ?= kryonix-demo-secret
export DAGSTER_HOME ?= $(KRYONIX_LOCAL_DIR)/dagster_home
# PITR needs nothing here: the product's defaults follow pgBackRest's conventions (repository
# /var/lib/pgbackrest, config in /etc/pgbackrest/conf.d as root), which the cluster's owner can
# reach from any clone, a root user's 0700 home included.
# The demo's off-site copy: an append-only endpoint on loopback in front of a local folder
# (scripts/offsite-endpoint.sh); only the demo and dev targets get these, not `make test`. As
# root the endpoint runs as its own system user (kryonix-offsite) and keeps its folder and state
# under /var/lib/kryonix-offsite (a 0700 home such as /root is closed to it); otherwise beside the
# primary repositories (the user's data home). Commands and Dagster runs get only the workers'
# URL with the endpoint's client password (kept 0600 in OFFSITE_CLIENT_FILE), never the admin
# path (KRYONIX_REPO_SECONDARY_ADMIN): the demo needs none; README, "Off-site copy".
DATA_HOME := $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/kryonix
OFFSITE_HOME ?= $(if $(filter 0,$(shell id -u)),/var/lib/kryonix-offsite,$(DATA_HOME)/offsite-endpoint)
OFFSITE_DIR ?= $(OFFSITE_HOME)/offsite
OFFSITE_STATE ?= $(OFFSITE_HOME)/state
OFFSITE_CLIENT_FILE ?= $(DATA_HOME)/offsite-client.secret
OFFSITE_PORT ?= 8765
OFFSITE_START := OFFSITE_PORT=$(OFFSITE_PORT) OFFSITE_DIR=$(OFFSITE_DIR) OFFSITE_STATE=$(OFFSITE_STATE) \
	OFFSITE_CLIENT_FILE=$(OFFSITE_CLIENT_FILE) scripts/offsite-endpoint.sh start
OFFSITE_ENV := KRYONIX_REPO_SECONDARY=$${KRYONIX_REPO_SECONDARY:-rest:http://kryonix-worker:$$(cat $(OFFSITE_CLIENT_FILE))@127.0.0.1:$(OFFSITE_PORT)}
# Dagster (and so every run it starts): the workers' URL, never an admin path or endpoint key this shell holds
OFFSITE_WORKER_ENV := env -u KRYONIX_REPO_SECONDARY_ADMIN -u KRYONIX_REPO_SECONDARY_ADMIN_ACCESS_KEY \
	-u KRYONIX_REPO_SECONDARY_ADMIN_SECRET_KEY -u OFFSITE_S3_ACCESS_KEY -u OFFSITE_S3_SECRET_KEY $(OFFSITE_ENV)
DEMO_TENANTS ?= 3
DEMO_SCALE ?= 1
PYTEST_ARGS ?= -n 4 --dist loadgroup

.PHONY: install system-deps services s3 demo dev test bench screenshot clean workers stop-workers

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

system-deps:
	@scripts/install-system-deps.sh

services:
	@scripts/start-services.sh

s3: install
	@if [ "$(KRYONIX_S3_ENDPOINT)" = "http://127.0.0.1:9900" ]; then scripts/s3-standin.sh; fi

demo: install system-deps services s3
	@mkdir -p "$(DAGSTER_HOME)" && touch "$(DAGSTER_HOME)/dagster.yaml"
	$(BIN)/kryonix-backup demo seed --tenants $(DEMO_TENANTS) --scale $(DEMO_SCALE)
	$(BIN)/kryonix-backup backup --all --type full
	@$(OFFSITE_START)
	$(OFFSITE_ENV) $(BIN)/kryonix-backup copy --all
	@# a tenant's restore points in both locations
	$(OFFSITE_ENV) $(BIN)/kryonix-backup snapshots demo1
	$(OFFSITE_ENV) $(BIN)/kryonix-backup snapshots demo1 --from secondary
	@# retention, freshness, integrity and a restore drill once per tenant, recorded in DAGSTER_HOME,
	@# so the UI shows every check of restore_point with a result
	$(BIN)/python -W "ignore:Specifying a partitions_def" -c "from kryonix_dagster.fleet.tenant_checks import main; raise SystemExit(main())"
	@# point-in-time recovery live on the local cluster (restarts it once for archive_mode)
	$(BIN)/kryonix-backup pitr setup --restart
	$(BIN)/kryonix-backup pitr backup --type full
	$(BIN)/kryonix-backup pitr status
	$(OFFSITE_ENV) $(BIN)/kryonix-backup status
	@# the fleet report (with the off-site lag) and the LGPD compliance report once, with their
	@# checks, so the UI's first look shows both (read-only; their schedules keep them current)
	$(OFFSITE_ENV) $(BIN)/python -W "ignore:Specifying a partitions_def" -m kryonix_dagster.fleet.demo_reports

dev: install system-deps services s3
	@mkdir -p "$(DAGSTER_HOME)" && touch "$(DAGSTER_HOME)/dagster.yaml"
	@$(OFFSITE_START)
	$(OFFSITE_WORKER_ENV) KRYONIX_SCHEDULES_RUNNING=$${KRYONIX_SCHEDULES_RUNNING:-false} $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: install system-deps services
	$(BIN)/pytest $(PYTEST_ARGS)

# Ratios against the baselines the issues name, measured side by side in one run;
# results in bench-results/*.md and *.json.
bench: install system-deps services
	$(BIN)/python -m benchmarks $(BENCH_SECTIONS)

# The asset graph in headless Chromium, for the README (needs the chromium package).
screenshot: install services s3
	scripts/screenshot.sh docs/asset-graph.png

clean:
	@if [ -f "$(KRYONIX_LOCAL_DIR)/moto_server.pid" ]; then kill $$(cat "$(KRYONIX_LOCAL_DIR)/moto_server.pid") 2>/dev/null || true; fi
	rm -rf "$(KRYONIX_LOCAL_DIR)" .pytest_cache

# Celery workers for KRYONIX_EXECUTOR=celery (N of them, pid files and logs in .kryonix/workers);
# `make stop-workers` ends exactly those. demo and dev do not need them (in-process default).
N ?= 2
workers: install services
	@mkdir -p "$(DAGSTER_HOME)" && touch "$(DAGSTER_HOME)/dagster.yaml"
	@KRYONIX_BIN=$(CURDIR)/$(BIN) scripts/workers.sh start $(N)

stop-workers:
	@scripts/workers.sh stop
