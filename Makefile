# Two commands on a fresh machine: `make demo` and `make test`.
# pip cannot express three things, so they live here: torchrec is installed with --no-deps
# (its metadata names the CUDA fbgemm-gpu), the fbgemm flavour depends on the device, and
# so does the torch build (PyPI's Linux torch is the CUDA 13 build).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# One flavour per venv, recorded in $(VENV)/.device: `make test` after `make install DEVICE=cuda`
# keeps cuda (a venv from before the record: its stamp says which); DEVICE=... switches,
# uninstalling the other flavour first (fbgemm-gpu and fbgemm-gpu-cpu are one import package,
# two distributions, and pip does not notice the clash).
RECORDED := $(strip $(or $(shell cat $(VENV)/.device 2>/dev/null),\
              $(firstword $(patsubst $(VENV)/.installed-%,%,$(wildcard $(VENV)/.installed-*)))))
DEVICE  ?= $(or $(RECORDED),cpu)
override DEVICE := $(strip $(DEVICE))
ifeq ($(filter cpu cuda,$(DEVICE)),)
$(error DEVICE=$(DEVICE): choose cpu (fbgemm-gpu-cpu, torch's CPU build) or cuda (fbgemm-gpu, torch's CUDA build))
endif
OTHER   := $(if $(filter cuda,$(DEVICE)),cpu,cuda)
STAMP   := $(VENV)/.installed-$(DEVICE)
FBGEMM_cpu  := fbgemm-gpu-cpu
FBGEMM_cuda := fbgemm-gpu
# The pins are read from pyproject.toml so that they have a single home.
PIN = $(shell $(PYTHON) -c "import tomllib;p=tomllib.load(open('pyproject.toml','rb'))['project'];print($(1))")
TORCH_PIN    = $(call PIN,[d for d in p['dependencies'] if d.startswith('torch==')][0])
TORCHREC_PIN = $(call PIN,p['optional-dependencies']['torchrec'][0])
# DEVICE=cpu: torch's CPU build. By default only pip's configured indexes are asked (PyPI, and
# a local wheel where the machine has one): `make` contacts no other host. Where pip would find
# only PyPI's CUDA build, give PyTorch's CPU wheel index, whose address has one home, the
# Dockerfile's ARG TORCH_CPU_INDEX (the image passes it): `make install TORCH_CPU_INDEX=URL`.
# Either way the stack check below verifies the build.
TORCH_CPU_INDEX ?=
TORCH_INDEX_cpu  := $(if $(strip $(TORCH_CPU_INDEX)),--extra-index-url $(strip $(TORCH_CPU_INDEX)))
TORCH_INDEX_cuda :=
TORCH_IS_cpu  := import torch, sys; sys.exit(torch.version.cuda is not None)
TORCH_IS_cuda := import torch, sys; sys.exit(torch.version.cuda is None)
# DEVICE=cuda checks torch.version.cuda, torch.cuda.is_available() and that fbgemm's CUDA ops
# run; STACK_GPU_CHECK=0 checks the builds only (an image built where no GPU is attached).
STACK_GPU_CHECK ?= 1
NPROC   ?= 2

.PHONY: install kernels demo test plans clean

install: $(STAMP) kernels

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	rm -f $(VENV)/.installed-$(OTHER) $(VENV)/.device
	$(PY) -m pip uninstall --quiet -y $(FBGEMM_$(OTHER))
	$(PY) -c "$(TORCH_IS_$(DEVICE))" 2>/dev/null || $(PY) -m pip uninstall --quiet -y torch
	$(PY) -m pip install --quiet --no-deps $(TORCH_INDEX_$(DEVICE)) "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[$(DEVICE),dev,cluster]"
	$(PY) -m pip install --quiet --no-deps "$(TORCHREC_PIN)"
	$(PY) -c "import sys; from dlrm_dist.distributed.stack import main; sys.exit(main(sys.argv[1:]))" \
	  --device $(DEVICE) $(if $(filter 0,$(STACK_GPU_CHECK)),--no-gpu)
	echo $(DEVICE) > $(VENV)/.device
	touch $@

# The criteo_tsv reader's kernels compiled ahead of time (dlrm_dist/data/columnar/build_kernels.py):
# a command loads them in milliseconds instead of paying numba's ~0.6 s set-up. Built whenever no
# build of the current sources for this CPU loads (edited kernels, a moved checkout, a deleted
# module: a second's check otherwise); a build of other sources is never loaded (numba's JIT runs
# them instead). Without C/C++ compilers it says so and the install goes on.
kernels: $(STAMP)
	$(PY) -m dlrm_dist.data.columnar.build_kernels --if-missing

# The default global batch rounded down to a multiple of NPROC, so `make demo NPROC=3` runs
# (the default itself lives in dlrm_dist/config/sections.py); ARGS may still set --batch-size.
DEMO_BATCH = $(shell $(PY) -c "from dlrm_dist.config.sections import TrainConfig; b = TrainConfig().global_batch_size; print(b - b % $(NPROC))")

demo: $(STAMP) kernels
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m dlrm_dist.train --batch-size=$(DEMO_BATCH) $(ARGS)

test: $(STAMP) kernels
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Regenerate every committed plan in sharding_plans/ from its inputs (a test checks they match).
plans: $(STAMP)
	for f in sharding_plans/inputs/*.json; do \
	  $(VENV)/bin/dlrm-plan make --inputs $$f -o sharding_plans/$$(basename $$f) || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache dlrm_dist/data/columnar/_tsv_compiled_* dlrm_dist/data/columnar/.build-*
