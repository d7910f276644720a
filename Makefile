# The one source of commands: the README and CI call these targets.
.DEFAULT_GOAL := help
UV ?= uv
export MYSQL_URL ?= mysql://root:@127.0.0.1:3306/paylane
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
# What mypy (strict) checks: the library, every service, the sandbox and the CLI; and their
# tests, bodies checked but annotations optional (pyproject.toml's [tool.mypy]).
TYPED = libs/common/src services/ingress/src services/order/src services/entitlement/src \
	services/notifier/src tools/sandbox/src src/paylane
TYPED_TESTS = conftest.py tests libs/common/tests services/ingress/tests services/order/tests \
	services/entitlement/tests services/notifier/tests tools/sandbox/tests

.PHONY: help install run demo migrate test test-unit test-services test-chaos test-fuzz test-all \
	bench lint fmt monitoring openapi docs

help:
	@echo "make run      migrate, then run all services against local RabbitMQ + MariaDB"
	@echo "make test     unit (no services), then integration + e2e + quick fuzz in parallel (~4 min)"
	@echo "make test-unit      the unit tier alone, RabbitMQ and MySQL unreachable"
	@echo "make test-chaos     outages, kills, rolling restarts, a 3-node cluster (serial, ~6 min)"
	@echo "make test-fuzz      the long fuzz run (10,000 hostile requests)"
	@echo "make test-all       everything but the container tier (what CI runs, with it)"
	@echo "make demo     (with make run or make up going) pay one order and print the timeline"
	@echo "make up       the docker-compose stack (deploy/), built and healthy; make down stops it"
	@echo "make image    build the paylane image (deploy/image.sh)"
	@echo "make test-containers  the compose stack and testcontainers tiers (needs an engine)"
	@echo "make bench    benchmarks (BENCH_ARGS=--quick for a smoke run)"
	@echo "make lint     ruff + mypy"
	@echo "make migrate  create/upgrade the database in MYSQL_URL"
	@echo "make monitoring  regenerate deploy/grafana/paylane.json and the k8s PrometheusRule"
	@echo "make openapi  regenerate docs/openapi/*.json from the services' route tables"
	@echo "make topology regenerate deploy/rabbitmq/definitions.json from the code's topology"
	@echo "make docs     regenerate docs/configuration.md and docs/metrics.md from the code"

install:
	$(UV) sync --frozen

migrate: install
	@$(UV) run paylane deps
	$(UV) run paylane migrate

# Development keys are made once in .dev/ (git-ignored); honcho runs the Procfile.
run: migrate
	$(UV) run paylane dev init
	@# A development database: paylane grants what the cloud function settles from now on.
	$(UV) run paylane cutover --if-unset
	@echo "ingress     http://127.0.0.1:8080  (POST /notify/wechatpay; /readyz /metrics on :9080)"
	@echo "order       http://127.0.0.1:8081  (POST /orders, GET /orders/{no}, GET /prices/current; /readyz /metrics on :9081)"
	@echo "entitlement http://127.0.0.1:8082  (/healthz; /readyz /metrics on :9082)"
	@echo "notifier    http://127.0.0.1:8083  (GET /ws?ticket=… , GET /events?ticket=…; /readyz /metrics on :9083)"
	@echo "sandbox     http://127.0.0.1:8090  (WeChat Pay v3 emulator; control API /sandbox/…)"
	@echo "console     http://127.0.0.1:8090/          (the sandbox console: pay, fail, refunds, notifications)"
	@echo "checkout    http://127.0.0.1:8090/checkout  (checkout demo: order, QR code, live push)"
	$(UV) run honcho start -e .dev/env -f Procfile

# With `make run` going in another terminal: one payment, printed as a timeline.
demo: install
	$(UV) run paylane demo

# The test tiers (docs/testing.md). The markers are in pyproject.toml; a test using the
# session's RabbitMQ and MySQL is marked integration even if its module forgot to
# (conftest.py). Each pytest-xdist worker has a vhost and a database of its own.
PYTEST = $(UV) run pytest
XDIST ?= -n 2 --dist loadgroup
# Unit: no service at all. The run points every RabbitMQ and MySQL URL at a closed port
# and the infra fixture fails: a unit test that needs a service fails here.
UNIT = not integration and not e2e and not chaos and not broker_outage and not fuzz and not containers
NO_SERVICES = PAYLANE_TEST_NO_SERVICES=1 PAYLANE_TEST_LOCAL=1 \
	PAYLANE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:1/ AMQP_URL=amqp://guest:guest@127.0.0.1:1/ \
	PAYLANE_TEST_MYSQL_URL=mysql://root:@127.0.0.1:1/ MYSQL_URL=mysql://root:@127.0.0.1:1/paylane
# The services' tiers that run side by side: integration, e2e (frontend and OpenAPI are
# e2e), the quick fuzz run. What stops or kills the shared broker and database is chaos.
SERVICES = (integration or e2e or fuzz) and not chaos and not broker_outage and not containers
CHAOS = (chaos or broker_outage) and not containers

test: test-unit test-services

test-unit: install
	$(NO_SERVICES) $(PYTEST) $(XDIST) -m "$(UNIT)"

test-services: install
	$(PYTEST) $(XDIST) -m "$(SERVICES)"

# One test at a time: these stop RabbitMQ, kill MariaDB and run a cluster of their own.
test-chaos: install
	$(PYTEST) -m "$(CHAOS)"

test-fuzz: install
	$(PYTEST) --hypothesis-profile=long -m "fuzz and not containers"

# Every tier but the containers' (make test-containers): each test once.
test-all: install
	$(MAKE) test-unit
	$(MAKE) test-services SERVICES="$(SERVICES) and not fuzz"
	$(MAKE) test-chaos
	$(MAKE) test-fuzz

# A benchmark, not a test: prints a markdown table, writes bench-results/ (JSON + PNG).
bench:
	$(UV) sync --frozen --group bench
	$(UV) run python -m bench.run $(BENCH_ARGS)

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy $(TYPED) $(TYPED_TESTS)

# Generated files: the Grafana dashboard (from deploy/grafana/dashboard.py) and the
# Kubernetes PrometheusRule (from deploy/prometheus/rules.yml). tests/deploy checks both.
monitoring: install
	$(UV) run python deploy/grafana/dashboard.py
	$(UV) run python deploy/prometheus/prometheusrule.py

# The broker's definitions (deploy/rabbitmq/definitions.json), from the code's topology
# (paylane_common.broker.topology); tests/deploy fails when the committed file differs.
.PHONY: topology
topology: install
	$(UV) run python -m paylane_common.broker.topology > deploy/rabbitmq/definitions.json

# The OpenAPI documents in docs/openapi/, from the route tables (a test compares them).
openapi: install
	$(UV) run python -m paylane.openapi

# The generated references: docs/configuration.md from the settings classes (the `#:`
# comments above the fields), docs/metrics.md from the Prometheus registry. tests/docs
# compares them.
docs: install
	$(UV) run python -m paylane.docs

fmt:
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

# The docker-compose stack (deploy/docker-compose.yml, docs/deployment.md): secret files
# are made once in deploy/secrets/, the image is built (deploy/image.sh), then the stack
# starts and `up` returns once every service is healthy. The WeChat Pay sandbox runs
# unless COMPOSE_PROFILES says otherwise (`make up COMPOSE_PROFILES=` for a real merchant).
# deploy/compose.sh finds the compose client and the engine (Docker, or podman's socket).
.PHONY: image up down test-containers
image:
	deploy/image.sh

up: install image
	$(UV) run python deploy/compose_secrets.py $${PAYLANE_SECRETS_DIR:+--dir "$$PAYLANE_SECRETS_DIR"}
	COMPOSE_PROFILES=$${COMPOSE_PROFILES-sandbox} deploy/compose.sh up -d --wait --wait-timeout 300

# Keeps the data volumes; `deploy/compose.sh down -v` wipes them.
down:
	deploy/compose.sh --profile sandbox --profile cli --profile monitoring down

# The container tier: the compose stack booted and paying (tests/containers), and the
# integration tests against MySQL and RabbitMQ started by testcontainers. Needs a
# container engine and the images (make image; stand-ins for the official ones where
# they cannot be pulled: tests/containers/images). .ci/run sets all this up.
test-containers: install image
	$(UV) run pytest -m containers
	PAYLANE_TEST_REQUIRE_CONTAINERS=1 $(UV) run pytest tests/integration
