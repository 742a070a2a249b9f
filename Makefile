# prompt-harness. Every target makes the virtual environment (.venv) on first use.
#
#   make base2new                      the demo (generated data, tiny pre-trained CLIP) when DATA_ROOT is empty
#   make base2new DATA_ROOT=/data      the paper's base-to-new study (Table 1 and 4) on your data
#   make crossdataset domaingen        Tables 2 and 3 on the demo (DATA_ROOT=/data: the paper's)
#   make crossdataset domaingen ablations DATA_ROOT=/data LAUNCHER=slurm
#   make fewshot                       few-shot study with linear-probe CLIP (demo without DATA_ROOT)
#   make report                        tables and figures from the results store
#   make dashboard                     W&B workspace views and report (after make report)
#   make test                          the test suite
#   make docs                          the documentation site (site/), built strictly
PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
DATA_ROOT ?=
LAUNCHER  ?=
BACKBONE  ?=
OUT       ?= output
DATASETS  ?=
SEEDS     ?=
METHODS   ?=
SHOTS     ?=
SET       ?=
TRACKING  ?= auto
PYTEST_ARGS ?=

# Without a data root the experiments run on the demo profile, in their own output folder.
RUN_OUT    := $(if $(DATA_ROOT),$(OUT),$(OUT)/demo)
REPORT_OUT := $(if $(DATA_ROOT),reports,reports/demo)
SWEEP_ARGS  = --out $(RUN_OUT) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),--profile demo) \
              $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(BACKBONE),--backbone $(BACKBONE)) \
              $(if $(DATASETS),--datasets $(DATASETS)) $(if $(SEEDS),--seeds $(SEEDS)) \
              $(if $(METHODS),--methods $(METHODS)) $(if $(SHOTS),--shots $(SHOTS)) $(foreach s,$(SET),--set $(s))
define DEMO_BANNER
	@echo "================================================================================"
	@echo " No DATA_ROOT given: running the DEMO profile (generated scenes, tiny CLIP"
	@echo " pre-trained here on first use), not the paper's setting. For the real study:"
	@echo "     make $@ DATA_ROOT=/path/to/datasets"
	@echo "================================================================================"
endef

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

.PHONY: venv base2new demo crossdataset domaingen ablations fewshot bigger_coop report dashboard status bench bench-authors demo-drift readme test lint docs help

venv: $(STAMP) ## create the virtual environment and install the project

base2new: $(STAMP) ## base-to-new study, Tables 1 and 4 (demo profile without DATA_ROOT)
	$(if $(DATA_ROOT),,$(DEMO_BANNER))
	$(PY) -m harness sweep base2new $(SWEEP_ARGS)
	$(PY) -m harness.report --results $(RUN_OUT) --out $(REPORT_OUT) --tracking $(TRACKING)

demo: ## the demo profile of base2new, whatever DATA_ROOT says
	$(MAKE) base2new DATA_ROOT=

crossdataset: $(STAMP) ## cross-dataset transfer from ImageNet, Table 2 (demo profile without DATA_ROOT)
	$(if $(DATA_ROOT),,$(DEMO_BANNER))
	$(PY) -m harness sweep crossdataset $(SWEEP_ARGS)
	$(PY) -m harness.report --results $(RUN_OUT) --out $(REPORT_OUT) --tracking $(TRACKING)

domaingen: $(STAMP) ## domain generalisation to ImageNet variants, Table 3 (demo profile without DATA_ROOT)
	$(if $(DATA_ROOT),,$(DEMO_BANNER))
	$(PY) -m harness sweep domaingen $(SWEEP_ARGS)
	$(PY) -m harness.report --results $(RUN_OUT) --out $(REPORT_OUT) --tracking $(TRACKING)

ablations: $(STAMP) ## context init/length ablations (Figure 4; demo profile without DATA_ROOT) and the bigger CoOp (Table 5, needs DATA_ROOT)
	$(if $(DATA_ROOT),,$(DEMO_BANNER))
	$(PY) -m harness sweep ablations $(SWEEP_ARGS)
	$(if $(DATA_ROOT),$(PY) -m harness sweep bigger_coop $(SWEEP_ARGS))
	$(PY) -m harness.report --results $(RUN_OUT) --out $(REPORT_OUT) --tracking $(TRACKING)

fewshot: $(STAMP) ## few-shot study, 1-16 shots, with linear-probe CLIP (CoOp's Figure 3; demo profile without DATA_ROOT)
	$(if $(DATA_ROOT),,$(DEMO_BANNER))
	$(PY) -m harness sweep fewshot $(SWEEP_ARGS)
	$(PY) -m harness.report --results $(RUN_OUT) --out $(REPORT_OUT) --tracking $(TRACKING)

report: $(STAMP) ## tables and figures of each store: $(OUT)/ (harness run, sweeps) into reports/, $(OUT)/demo/ into reports/demo/
	$(if $(wildcard $(OUT)/results.jsonl),$(PY) -m harness.report --results $(OUT) --out reports --tracking $(TRACKING))
	$(if $(wildcard $(OUT)/demo/results.jsonl),$(PY) -m harness.report --results $(OUT)/demo --out reports/demo --tracking $(TRACKING))
	$(if $(wildcard $(OUT)/results.jsonl $(OUT)/demo/results.jsonl),,$(error No results in $(OUT)/ or $(OUT)/demo/ yet: run an experiment (make base2new) or python -m harness run first))

dashboard: $(STAMP) ## W&B workspace views and report from reports/ (after make report; offline: JSON specs to publish)
	$(PY) -m harness.dashboard --results $(RUN_OUT) --report-dir $(REPORT_OUT) \
	    --mode $(if $(filter online offline,$(TRACKING)),$(TRACKING),auto)

status: $(STAMP) ## progress of an experiment's sweeps, as they recorded it: make status EXPERIMENT=base2new
	$(PY) -m harness status $(or $(EXPERIMENT),base2new) --out $(RUN_OUT)

bench: $(STAMP) ## CoCoOp/CoOp speed benchmark, published vs fast path (QUICK=1: ~3 min), writes reports/bench.md only
	$(PY) -m benchmarks.bench $(if $(QUICK),--quick) --out reports/bench.md

bench-authors: $(STAMP) ## every method against its authors' code: make bench-authors AUTHORS="cocoop=DIR coop=DIR ..." (reports/bench-vs-authors.md)
	$(if $(AUTHORS),,$(error make bench-authors needs AUTHORS="cocoop=/path/to/CoOp maple=/path/to/multimodal-prompt-learning ..." (git clones of the authors' repositories)))
	$(PY) -m benchmarks.vs_authors --authors $(AUTHORS) --out reports/bench-vs-authors.md

demo-drift: $(STAMP) ## compare the demos' results in output/demo (make base2new, crossdataset, ...) with reports/demo-reference; RERUN=1: re-run every demo study first (~12 min)
	$(PY) -m benchmarks.demo drift $(if $(RERUN),,--results $(OUT)/demo)

readme: $(STAMP) ## refresh the generated blocks of README.md and docs/ from the reports in reports/ (one: python -m benchmarks.readme bench --from FILE)
	$(PY) -m benchmarks.readme

.PHONY: data
data: $(STAMP) ## fetch, verify and arrange the datasets: make data DATA_ROOT=/data [DATASETS=dtd,eurosat] [FROM=/archives]
	$(if $(DATA_ROOT),,$(error make data needs DATA_ROOT=/path/to/data (FROM=DIR: the files fetched by hand, no network)))
	$(PY) -m harness.data prepare --root $(DATA_ROOT) $(if $(DATASETS),--dataset $(DATASETS)) $(if $(FROM),--from $(FROM))

test: $(STAMP) ## run the test suite (Slurm tests run when a cluster is up: tools/slurm-cluster.sh start)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff: lint and formatting check (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP) ## build the documentation site into site/ (strict: a broken link or an unlisted page fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict  # not --quiet: it hides the warnings strict mode counts

help: ## list the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "  variables: DATA_ROOT= LAUNCHER=local|slurm|debug BACKBONE= OUT=$(OUT) DATASETS=a,b SEEDS=1,2 METHODS=coop,cocoop SHOTS=1,16"
	@echo "             SET='epochs=2 precision=fp32' (any run key)  TRACKING=auto|online|offline|none  EXPERIMENT=base2new"
	@echo "             QUICK=1 (make bench)  RERUN=1 (make demo-drift)"
