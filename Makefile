# Every target runs inside .venv, which `make setup` builds from pyproject.toml.
PY := .venv/bin/python
STAMP := .venv/.installed
STUDY ?= default
DEVICE ?= auto
THREADS ?=
TOP ?= 5
REFERENCE ?=
STORAGE ?=
# STORAGE: a storage URL, or a path to an SQLite file (the campaign's: studies/campaign/$(STUDY).db)
STORAGE_ARG = $(if $(STORAGE),--storage $(if $(findstring ://,$(STORAGE)),$(STORAGE),sqlite:///$(abspath $(STORAGE))))
export CL_DATA_DIR ?= $(CURDIR)/data

.PHONY: setup test test-slow lint search campaign reproduce final-eval results-table regenerate dashboard status fidelity panel promote gonogo \
        sweeps fresh-streams \
        bench-harness bench-generator bench-search bench-pruners gpu-check pretrain-trunk clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy continual-learning/clharness space search evaluation cli

# Runs write your own study, studies/local/$(STUDY).db; the committed studies/*.db references are read-only.
# Without full MNIST it runs on the 5,000-image offline subset as a study of its own, studies/local/NAME_offline.db.
# N_TRIALS: the study's total budget (default: its file's), e.g. N_TRIALS=2 for a first look.
search: $(STAMP)
	$(PY) -m search run --study $(STUDY) --auto-fallback $(STORAGE_ARG) $(if $(N_TRIALS),--n-trials $(N_TRIALS))

# The campaign (docs/search.md): two single-thread workers on the committed, resumable campaign storage.
campaign: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m search run --study $(STUDY) --workers 2 --threads 1 \
		--storage sqlite:///$(CURDIR)/studies/campaign/$(STUDY).db

# Two single-thread processes of one command side by side: they share its runs (claims on the run cache).
twice = (OMP_NUM_THREADS=1 $(1) & pid=$$!; OMP_NUM_THREADS=1 $(1); rc=$$?; wait $$pid || rc=2; exit $$rc)
BASELINES := ewc online_ewc si mas l2
# Promotion, the campaign's top 5 and each baseline's top 3 (with their warm starts), on two single-thread
# processes that walk the studies in opposite orders: they share runs through the cache's claims and meet in the
# middle, where two processes on one study at a time would leave a core idle at the tail of every study.
PROMOTED := campaign $(BASELINES)
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
promote_chain = (for b in $(1); do OMP_NUM_THREADS=1 $(PY) -m search promote --study $$b \
	--top $$(if [ $$b = campaign ]; then echo 5; else echo 3; fi) --storage $(call CAMPAIGN_DB,$$b) --threads 1 \
	|| exit 2; done)
CAMPAIGN_DB = sqlite:///$(CURDIR)/studies/campaign/$(1).db

# The whole campaign behind the results table (issue 10), in order; every step resumes where it stopped (studies
# resume, runs are cached), so after an interruption run it again. Split-CIFAR100 is `make final-eval` on a GPU.
# The held-out streams score `mas` at its published strength too: on the test split's first seeds it scored above
# every tuned baseline, where the validation stream had put it last of its study's promoted four.
reproduce: $(STAMP)
	$(MAKE) campaign STUDY=campaign
	for b in $(BASELINES); do $(MAKE) campaign STUDY=$$b || exit 2; done
	($(call promote_chain,$(PROMOTED)) & pid=$$!; $(call promote_chain,$(call reverse,$(PROMOTED))); rc=$$?; \
		wait $$pid || rc=2; exit $$rc)
	$(MAKE) regenerate STUDY="campaign $(BASELINES)"
	$(call twice,$(PY) -m search final-eval --benchmarks permMNIST --seeds 100 101 102 \
		--methods candidate tuned_best mas --out results/heldout --device $(DEVICE) --threads 1)
	$(call twice,$(PY) -m search final-eval --benchmarks splitMNIST permMNIST --device $(DEVICE) --threads 1)
	$(MAKE) results-table

# These read studies/local/$(STUDY).db when you have one, else the committed study (studies/campaign/, else
# studies/), and say which; REFERENCE=1 forces the committed one.
status: $(STAMP)
	$(PY) -m search status --study $(STUDY) $(if $(REFERENCE),--reference) $(STORAGE_ARG)

regenerate: $(STAMP)
	$(PY) -m search export --study $(STUDY) $(if $(REFERENCE),--reference) $(STORAGE_ARG) --out custom_regularization.py

dashboard: $(STAMP)
	$(PY) -m search dashboard --study $(STUDY) $(if $(REFERENCE),--reference) $(STORAGE_ARG)

final-eval: $(STAMP)
	$(PY) -m search final-eval --device $(DEVICE) $(if $(THREADS),--threads $(THREADS))

# The report of every cached run as it is, and the README's results block from it (run nothing).
results-table: $(STAMP)
	$(PY) -m evaluation.report --out results --benchmarks splitMNIST permMNIST CIFAR100 --readme README.md

fidelity: $(STAMP)
	$(PY) -m search fidelity --study $(STUDY) $(if $(THREADS),--threads $(THREADS))

# The fidelity panel (docs/fidelity.md): full runs and candidate proxies, cached; two side by side share the work.
panel: $(STAMP)
	$(PY) -m search panel $(if $(THREADS),--threads $(THREADS))

# Re-runs the study's TOP best trials at the full protocol (validation split) and stores the scores on it.
promote: $(STAMP)
	$(PY) -m search promote --study $(STUDY) --top $(TOP) $(STORAGE_ARG) $(if $(THREADS),--threads $(THREADS)) \
		$(if $(STREAMS),--streams $(STREAMS))

# The structured family's go/no-go (docs/fidelity.md): the shipped design (campaign trial 105), its warm start
# mas_calibrated, the reference code's K-FAC EWC and the structured variant the probe study picked, at the full
# protocol on validation streams 1001 and 1002; two single-thread processes share the runs.
GONOGO := trial_105=results/fidelity/modules/campaign/trial_105-3faca402d092.py \
	mas_calibrated=results/fidelity/modules/campaign/trial_3-9b20a027e4f8.py kfac_merged_r32 kfac_ewc
gonogo: $(STAMP)
	$(call twice,$(PY) -m search validate --threads 1 --module $(GONOGO) --report results/fidelity/gonogo.md)

# Issue 29's budget rule at full fidelity (README, "The budget rule", step 2): strength sweeps, in steps of at
# most 2x, of the presets whose tuned strength moved more than 3x from the published one (MAS to 22x, SI to
# 0.06x), on validation stream 1001 (a family's best two go on to stream 1002); the published strengths are the
# presets themselves (`mas`, `si`), whose runs are already cached; two single-thread processes share the runs.
SWEEPS := mas mas@2 mas@4 mas@8 mas@16 mas@32 si@0.03 si@0.06 si@0.12 si@0.25 si@0.5 si
sweeps: $(STAMP)
	$(call twice,$(PY) -m search validate --threads 1 --seeds 1001 --module $(SWEEPS) \
		--report results/fidelity/sweeps.md)

# Fresh Permuted-MNIST test streams that nothing in the project has touched (permutation seeds 103-107, test
# split): the shipped module, published MAS and the two strongest tuned baselines.
FRESH_SEEDS := 103 104 105 106 107
FRESH_METHODS ?= candidate mas tuned_mas tuned_si
fresh-streams: $(STAMP)
	$(call twice,$(PY) -m search final-eval --benchmarks permMNIST --seeds $(FRESH_SEEDS) \
		--methods $(FRESH_METHODS) --out results/fresh --device $(DEVICE) --threads 1)

pretrain-trunk: $(STAMP)
	$(PY) continual-learning/pretrain_trunk.py --device $(DEVICE)

bench-harness: $(STAMP)
	$(PY) bench/harness_speed.py

bench-generator: $(STAMP)
	$(PY) bench/generator_speed.py

bench-search: $(STAMP)
	$(PY) bench/search_speed.py

bench-pruners: $(STAMP)
	$(PY) bench/search_pruners.py

gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache
