# IIA Lab. `make lab` and `make test` do all set-up on a fresh machine (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JupyterLab refuses to run as root unless told; containers and CI sandboxes often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# pip is quiet for `make test`; `make lab` shows its progress (a fresh install takes minutes)
PIP_QUIET ?= --quiet
# third-party MCP clients the suite runs (the TypeScript SDK, the Inspector CLI): npm ci from the
# committed lock into clients/node/node_modules (git-ignored); --ignore-scripts: nothing to build
NODE_DIR   := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: install lab demo test lint typecheck bench mutants up down status clean

install: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing iia-lab and its tools into $(VENV) (minutes on a fresh machine)"
	$(BIN)/python -m pip install $(PIP_QUIET) --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install $(PIP_QUIET) --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@echo "==> installing the TypeScript MCP SDK and the Inspector CLI into $(NODE_DIR)/node_modules"
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

## lab: start the simulated world and JupyterLab on notebooks/ (Ctrl-C stops both)
lab: PIP_QUIET :=
lab: install
	@# outputs JupyterLab saves into a notebook never reach a commit (a git filter, this clone only)
	@# (--keep-id: the committed notebooks keep their cell ids, so a saved notebook is unchanged)
	-git rev-parse --git-dir >/dev/null 2>&1 && $(BIN)/nbstripout --install && \
	  git config filter.nbstripout.clean '"$(abspath $(BIN))/python" -m nbstripout --keep-id'
	$(BIN)/iia-lab up --detach
	@# no news toast, no kernel dialog, and the URL printed once it answers (harness/jupyter_lab.py)
	@# (the lab stops once: on INT or TERM the shell exits, and its EXIT trap stops the lab)
	trap '$(BIN)/iia-lab down' EXIT; trap 'exit 130' INT TERM; \
	$(BIN)/python -m harness.jupyter_lab $(ROOT_FLAG)

## demo: a headless walkthrough of the four tiers through the real chain (ARGS=--interactive)
demo: install
	$(BIN)/python -m harness.demo $(ARGS)

## test: lint, the test suite, and every notebook executed once (a scripted phone answers)
test: install lint typecheck
	@# a private lab directory: the suite never attaches to (or answers pushes in) a running lab
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	  IIA_LAB_DIR=$$d IIA_PHONE=scripted $(BIN)/pytest tests

## bench: what enforcement costs, against an unenforced baseline (bench/results.json, .png);
##        then start-up and notebook durations against their goals (bench/timings.json), then
##        the soak: RSS and store sizes per 1000 calls over 20,000 calls (bench/soak.json)
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.timings
	$(BIN)/python -m bench.soak

## mutants: remove each security rule of mutants/rules.toml in a copy of the tree and run the
## tests that must catch it; fails on a survivor (slow, not in CI; ARGS=--only ID,... --jobs 2)
mutants: install
	$(BIN)/python -m mutants.run $(ARGS)

lint: install
	$(BIN)/ruff check .

## typecheck: the product is typed throughout (mypy --strict), the harness checked (mypy);
##            settings in pyproject.toml
typecheck: install
	$(BIN)/mypy --strict iia
	$(BIN)/mypy harness

up: install
	$(BIN)/iia-lab up --detach

down:
	-$(BIN)/iia-lab down

status:
	$(BIN)/iia-lab status

clean: down
	-$(BIN)/iia-lab clean
	rm -rf $(VENV) $(NODE_DIR)/node_modules .lab .pytest_cache .ruff_cache *.egg-info
