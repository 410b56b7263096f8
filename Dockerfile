# sharq-vllm serving image: the official vLLM OpenAI server image + the sharq-vllm plugin with its
# CUDA kernels built for Hopper (sm_90a).
#
#   docker build -t sharq-vllm:0.1.0 .
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro --shm-size 16g \
#       sharq-vllm:0.1.0 /models/Qwen2.5-Coder-1.5B-Instruct --quantization sharq
#
# Stage 1 builds a wheel in the same image the server runs (same Python, torch and CUDA runtime,
# so the extension's ABI matches); it adds the CUDA compiler only if the image lacks one. Stage 2
# installs that wheel into a clean copy of the vLLM image and drops root. docs/DEPLOY.md.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.26.0

FROM ${VLLM_IMAGE} AS build
# sm_90a: the kernels use Hopper-only features (clusters, PDL); other GPUs take the
# PyTorch reference path at run time.
ARG TORCH_CUDA_ARCH_LIST="9.0a"
ARG MAX_JOBS=8
ENV SHARQ_BUILD_CUDA=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    CUDA_HOME=/usr/local/cuda \
    PATH=/usr/local/cuda/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# What the image lacks for compiling: the nvcc matching torch's CUDA (major.minor) and its dev
# headers from NVIDIA's apt repository (the CUDA base images configure it), and a host C++
# compiler. Versions follow torch's CUDA, so they are not pinned here.
# hadolint ignore=DL3008
RUN pkgs=() && \
    if ! command -v nvcc >/dev/null; then \
        cuda="$(python3 -c 'import torch; print(torch.version.cuda)')" && v="${cuda/./-}" && \
        pkgs+=("cuda-nvcc-${v}" "cuda-cudart-dev-${v}" "cuda-nvrtc-dev-${v}" \
               "libcublas-dev-${v}" "libcusparse-dev-${v}" "libcusolver-dev-${v}"); \
    fi && \
    if ! command -v g++ >/dev/null; then pkgs+=(g++); fi && \
    if [ "${#pkgs[@]}" -gt 0 ]; then \
        apt-get update && apt-get install -y --no-install-recommends "${pkgs[@]}" && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    nvcc --version && g++ --version && python3 -c "import sysconfig, os, sys; \
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 'no Python.h')"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sharq_vllm ./sharq_vllm
# --no-build-isolation: compile against the torch already in the image (no second torch).
# Build-stage tools only (nothing of them reaches the final image); setuptools stays a range so
# an image whose vLLM pins it keeps its own.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir "setuptools>=68" wheel ninja && \
    python3 -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist . && \
    python3 -c "import glob, sys, zipfile; w = glob.glob('/dist/sharq_vllm-*.whl'); \
names = zipfile.ZipFile(w[0]).namelist() if len(w) == 1 else []; \
sys.exit(0 if any(n.startswith('sharq_vllm/_C') for n in names) else 'no sharq_vllm/_C in ' + str(w))"

FROM ${VLLM_IMAGE}
ARG SHARQ_UID=2000
LABEL org.opencontainers.image.title="sharq-vllm" \
      org.opencontainers.image.description="vLLM OpenAI server with the SharQ FP4 quantization plugin (--quantization sharq)" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /dist /tmp/sharq-dist
COPY deploy/ray-node.sh /usr/local/bin/sharq-ray-node
# --no-deps: vLLM, torch and safetensors come with the image and must stay exactly as they are.
RUN python3 -m pip install --no-cache-dir --no-deps /tmp/sharq-dist/sharq_vllm-*.whl && \
    rm -rf /tmp/sharq-dist && \
    chmod 0755 /usr/local/bin/sharq-ray-node && \
    python3 -c "import importlib.metadata as md, sys; \
eps = [e.value for e in md.entry_points(group='vllm.general_plugins') if e.name == 'sharq']; \
sys.exit(0 if eps == ['sharq_vllm:register'] else 'sharq plugin entry point missing: %s' % eps)" && \
    python3 -c "import sharq_vllm, sharq_vllm.checkpoint, sharq_vllm.vllm_plugin" && \
    groupadd --system --gid "${SHARQ_UID}" sharq && \
    useradd --system --uid "${SHARQ_UID}" --gid sharq --create-home --home-dir /home/sharq \
        --shell /usr/sbin/nologin sharq && \
    mkdir -p /models && chown "${SHARQ_UID}:${SHARQ_UID}" /models
# No JIT compile at run time (there is no nvcc here); caches under the non-root HOME.
ENV HOME=/home/sharq \
    HF_HOME=/home/sharq/.cache/huggingface \
    SHARQ_JIT=0 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HEALTH_PORT=8000
USER ${SHARQ_UID}:${SHARQ_UID}
WORKDIR /home/sharq
EXPOSE 8000
# /health answers 200 once the engine is up; model loading can take minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEALTH_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["vllm", "serve"]
