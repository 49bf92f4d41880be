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
        modules         sweeps budget ladder ladder-check fresh-streams \
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
CAMPAIGN_DB = sqlite:///$(CURDIR)/studies/campaign/$(1).db

# The whole campaign behind the results table (issue 10), in order; every step resumes where it stopped (studies
# resume, runs are cached), so after an interruption run it again. Split-CIFAR100 is `make final-eval` on a GPU.
# The held-out streams score `mas` at its published strength too: on the test split's first seeds it scored above
# every tuned baseline, where the validation stream had put it last of its study's promoted four.
reproduce: $(STAMP)
	$(MAKE) campaign STUDY=campaign
	for b in $(BASELINES); do $(MAKE) campaign STUDY=$$b || exit 2; done
	$(MAKE) budget
	$(MAKE) regenerate STUDY="campaign $(BASELINES)"
	$(call twice,$(PY) -m search final-eval --benchmarks permMNIST --seeds 100 101 102 \
		--methods candidate tuned_best mas --out results/heldout --device $(DEVICE) --threads 1)
	$(call twice,$(PY) -m search final-eval --benchmarks splitMNIST permMNIST --device $(DEVICE) --threads 1)
	$(MAKE) fresh-streams
	$(MAKE) results-table

# These read studies/local/$(STUDY).db when you have one, else the committed study (studies/campaign/, else
# studies/), and say which; REFERENCE=1 forces the committed one.
status: $(STAMP)
	$(PY) -m search status --study $(STUDY) $(if $(REFERENCE),--reference) $(STORAGE_ARG)

# The module files the run records name (results/**/modules/ and studies/**/modules/ are not kept in the
# repository): written back from each record's design, the study trial it came from, or the commit that last held
# it, each checked against its sha256.
modules: $(STAMP)
	$(PY) -m search modules

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
panel: modules
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
gonogo: modules
	$(call twice,$(PY) -m search validate --threads 1 --module $(GONOGO) --report results/fidelity/gonogo.md)

# Issue 29's budget rule (README, "The budget rule"). Step 2, the strength sweeps of the baselines whose tuned
# strength moved more than 3x from the published one: MAS (to 22x) gets 2x-16x beside its 1x, 22x and 32x
# finalists, each point a trial of its study (outside its budget), promoted with its warm starts; SI's finalists
# (0.03x, 0.06x, 0.12x and its published 1x) already bracket its best in steps of at most 2x.
SWEEP_POINTS := mas@2 mas@4 mas@8 mas@16
sweeps: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m search sweep --study mas --storage $(call CAMPAIGN_DB,mas) --points $(SWEEP_POINTS) \
		--threads 1
	$(call twice,$(PY) -m search promote --study mas --top 5 --storage $(call CAMPAIGN_DB,mas) --threads 1)

# Steps 1 and 3: every family's finalists (its 5 best by proxy and its warm starts) on stream 1001, then its best
# two at full fidelity on streams 1001 and 1002 (Split-MNIST 1000 and 1003), whose mean picks the family's design;
# each step is one pool of runs over all families (each study read from its default storage), so the two
# processes wait for each other once per step; cached runs are reused, so it resumes where it stopped.
FAMILIES := campaign ewc online_ewc si mas l2
TWO_STREAMS := permMNIST=1001,1002 splitMNIST=1000,1003
budget: sweeps
	$(call twice,$(PY) -m search promote --study $(FAMILIES) --top 5 --threads 1)
	$(call twice,$(PY) -m search promote --study $(FAMILIES) --from full --top 2 --streams $(TWO_STREAMS) \
		--threads 1)

# The ladder of fidelities (docs/fidelity.md): a study's proxies (make search) filter; its 20 best then run the
# protocol's own iterations and rate on the first 4 contexts (fidelity contexts4); the 5 best of those run the full
# protocol on two validation streams, whose mean ranks them for make regenerate.
ladder: $(STAMP)
	$(call twice,$(PY) -m search promote --study $(STUDY) $(STORAGE_ARG) --top 20 --contexts 4 --threads 1)
	$(call twice,$(PY) -m search promote --study $(STUDY) $(STORAGE_ARG) --from contexts4 --top 5 \
		--streams $(TWO_STREAMS) --threads 1)

# The ladder's middle rung measured (docs/fidelity.md): the first 4 contexts of every family's two-stream finalists,
# the campaign's warm start mas_calibrated and the structured kfac_merged_r32 on validation streams 1001 and 1002,
# ranked against their full runs on the same streams (which they all have once `make budget` is done).
LADDER_CHECK := mas_calibrated=results/fidelity/modules/campaign/trial_3-9b20a027e4f8.py \
	kfac_merged_r32=results/fidelity/modules/validate/kfac_merged_r32-4e23475303e9.py
ladder-check: modules
	$(call twice,$(PY) -m search validate --threads 1 --contexts 4 --seeds 1001 1002 --finalists $(FAMILIES) \
		--module $(LADDER_CHECK) --report results/fidelity/ladder.md)

# Fresh Permuted-MNIST test streams that nothing in the project has touched (permutation seeds 103-107, test
# split): the shipped module, the search's own design, published MAS and the two strongest tuned baselines by the
# budget rule's two-stream values (MAS, whose code ships, and SI).
FRESH_SEEDS := 103 104 105 106 107
FRESH_METHODS ?= candidate searched mas tuned_mas tuned_si
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
