# syntax=docker/dockerfile:1
# Images for dlrm_dist. The default (last) target is CUDA; `--target cpu` builds the CPU one.
# Both install through the Makefile, so the pins come from pyproject.toml alone.
#   docker build -t dlrm_dist .                  # CUDA (needs the NVIDIA container toolkit to run)
#   docker build --target cpu -t dlrm_dist:cpu .
#   docker run --rm dlrm_dist:cpu                # the demo job on 2 CPU ranks
# Run GPU images with shared memory and pinnable memory for NCCL and the pinned input batches:
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --rm dlrm_dist
# (--shm-size=16g instead of --ipc=host; add --network=host and --device=/dev/infiniband for
# InfiniBand between nodes, and -e NCCL_SOCKET_IFNAME=... to pick the interface).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS source
# A C compiler: torch.compile (--train.compile) builds inductor's C++ kernels on CPU and
# Triton's launcher stubs on CUDA; `make install` compiles the Criteo parser ahead of time for
# the CPU the image is built on (on another kind of CPU numba's JIT runs it: see the README).
RUN apt-get update && apt-get install -y --no-install-recommends make build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dlrm_dist
COPY pyproject.toml Makefile README.md ./
COPY dlrm_dist ./dlrm_dist
COPY launch ./launch
COPY examples ./examples
COPY sharding_plans ./sharding_plans
ENV VENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1

FROM source AS cpu
# PyPI's Linux torch wheel is the CUDA build; the CPU image takes torch's CPU index
# (the Makefile reads this line for DEVICE=cpu: the address has one home).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN make install DEVICE=cpu TORCH_CPU_INDEX=${TORCH_CPU_INDEX} VENV=/opt/venv
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train"]

FROM source AS cuda
# rdma-core and the verbs providers: without libibverbs NCCL falls back to TCP sockets
# between nodes (InfiniBand, RoCE; AWS EFA adds its own installer on top).
RUN apt-get update && apt-get install -y --no-install-recommends rdma-core ibverbs-providers libibverbs1 \
    && rm -rf /var/lib/apt/lists/*
# The build has no GPU attached: check the CUDA builds of torch and fbgemm only.
RUN make install DEVICE=cuda STACK_GPU_CHECK=0 VENV=/opt/venv
ENTRYPOINT ["torchrun"]
# --train.device=cuda: an image started without --gpus fails at once instead of training on the CPU.
CMD ["--standalone", "--nproc_per_node=gpu", "-m", "dlrm_dist.train", "--train.device=cuda"]
