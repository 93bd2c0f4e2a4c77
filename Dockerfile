# syntax=docker/dockerfile:1
# Images for dlrm_dist. The default (last) target is CUDA; `--target cpu` builds the CPU one.
# Both install through the Makefile, so the pins come from pyproject.toml alone.
#   docker build -t dlrm_dist .                  # CUDA (needs the NVIDIA container toolkit to run)
#   docker build --target cpu -t dlrm_dist:cpu .
#   docker run --rm dlrm_dist:cpu                # the demo job on 2 CPU ranks
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS source
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dlrm_dist
COPY pyproject.toml Makefile README.md ./
COPY dlrm_dist ./dlrm_dist
COPY launch ./launch
COPY examples ./examples
ENV VENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1

FROM source AS cpu
# PyPI's Linux torch wheel is the CUDA build; the CPU image takes torch's CPU index.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN PIP_EXTRA_INDEX_URL=${TORCH_CPU_INDEX} make install DEVICE=cpu VENV=/opt/venv
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train"]

FROM source AS cuda
RUN make install DEVICE=cuda VENV=/opt/venv
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=gpu", "-m", "dlrm_dist.train"]
