# Two commands on a fresh machine: `make demo` and `make test`.
# pip cannot express two things, so they live here: torchrec is installed with --no-deps
# (its metadata names the CUDA fbgemm-gpu), and the fbgemm flavour depends on the device.
VENV    ?= .venv
PYTHON  ?= python3
DEVICE  ?= cpu            # cpu -> fbgemm-gpu-cpu, cuda -> fbgemm-gpu (see README)
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(strip $(DEVICE))
# The torchrec pin is read from pyproject.toml so that it has a single home.
TORCHREC_PIN = $(shell $(PYTHON) -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['torchrec'][0])")
NPROC   ?= 2

.PHONY: install demo test plans clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[$(strip $(DEVICE)),dev,cluster]"
	$(PY) -m pip install --quiet --no-deps "$(TORCHREC_PIN)"
	$(PY) -c "import torchrec, fbgemm_gpu, torch; print('stack ok: torch', torch.__version__)"
	touch $@

# The default global batch rounded down to a multiple of NPROC, so `make demo NPROC=3` runs
# (the default itself lives in dlrm_dist/config/schema.py); ARGS may still set --batch-size.
DEMO_BATCH = $(shell $(PY) -c "from dlrm_dist.config.schema import TrainConfig; b = TrainConfig().global_batch_size; print(b - b % $(NPROC))")

demo: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m dlrm_dist.train --batch-size=$(DEMO_BATCH) $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Regenerate every committed plan in sharding_plans/ from its inputs (a test checks they match).
plans: $(STAMP)
	for f in sharding_plans/inputs/*.json; do \
	  $(VENV)/bin/dlrm-plan make --inputs $$f -o sharding_plans/$$(basename $$f) || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
