# SEER on Kubeflow — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# One torch/OpenMP thread per process: the suite runs multi-process (torchrun, DataLoader workers) on
# 2 cores, where oversubscribed threads make small CPU steps tens of times slower.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: help install test test-fast lint demo compile pretrain-10b schedule-reeval images push clean docker-check

help:  ## list targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install seer with kfp + test extras (idempotent)

test: install  ## run the whole test suite (slow tests included)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  ## run the tests not marked slow
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# -- Kubeflow pipelines (pipelines/) -------------------------------------------------------------
DEMO_OUTPUT ?= demo-output
PIPELINE_IMAGES = IMAGE_REGISTRY=$(IMAGE_REGISTRY) IMAGE_TAG=$(IMAGE_TAG)

demo: install  ## run the whole seer-pretrain DAG locally (kfp.local, CPU, rg-tiny) into DEMO_OUTPUT
	$(PY) -m pipelines.run.local_run --output $(DEMO_OUTPUT)

compile: install  ## write the seer-pretrain / seer-evaluate YAML packages to build/pipelines/
	$(PIPELINE_IMAGES) $(PY) -m pipelines.compile --output-dir build/pipelines

pretrain-10b: install  ## run seer-pretrain with rg10b on 62x8 GPUs on KFP_HOST (MODE=job: kubectl apply the job; DRY_RUN=1: plan only; BACKEND=trainjob: Trainer v2; KUEUE_QUEUE=q)
	$(PIPELINE_IMAGES) $(PY) -m pipelines.run.submit

schedule-reeval: install  ## schedule a recurring seer-evaluate run on KFP_HOST (CRON='0 0 3 * * *', caching off, no catch-up)
	$(PIPELINE_IMAGES) $(PY) -m pipelines.run.schedule

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache demo-output

# -- container images (images/) -----------------------------------------------------------------
IMAGE_REGISTRY ?= registry.example.com/seer
IMAGE_TAG ?= 0.1.0
DOCKER ?= docker
IMAGES := trainer component

docker-check:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make: '$(DOCKER)' not found: install Docker (or set DOCKER=podman) to build images" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make: cannot reach the Docker daemon ($(DOCKER) info failed): start it or set DOCKER_HOST" >&2; exit 1; }

images: docker-check  ## build images/trainer (CUDA) and images/component (CPU) as IMAGE_REGISTRY/NAME:IMAGE_TAG
	@for name in $(IMAGES); do \
	  echo "building $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG)"; \
	  $(DOCKER) build -f images/$$name/Dockerfile -t $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG) . || exit 1; \
	done

push: images  ## push both images to IMAGE_REGISTRY (set IMAGE_REGISTRY, IMAGE_TAG)
	@for name in $(IMAGES); do $(DOCKER) push $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG) || exit 1; done
