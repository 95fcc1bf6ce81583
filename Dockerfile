# resnest-deploy as a pipeline step. Three targets:
#
#   full     (default) export, quantize, build (TensorRT-RTX builds on the CPU), check, bench.
#   runtime  no PyTorch: predict, bench, eval, inspect, and check against the PyTorch outputs
#            recorded at export; for edge devices that run engines and ONNX files.
#   serve    runtime + a Triton server (the tritonserver nvidia-pytriton bundles) for any artifact.
#
#   docker build -t resnest-deploy .
#   docker build --target runtime -t resnest-deploy:runtime .
#   docker build --target serve -t resnest-deploy:serve .
#   docker run --rm -v "$PWD/models:/work/models" resnest-deploy pipeline --arch resnest14d_digits -p int8
#   docker run --rm --shm-size=256m -p 8000-8002:8000-8002 -v "$PWD/models:/models" resnest-deploy:serve /models/m.onnx
#
# GPU and Jetson bases (TensorRT comes with the image; the venv sees it through system site-packages):
#   docker build --target runtime --build-arg BASE=nvcr.io/nvidia/tensorrt:24.08-py3 \
#       --build-arg EXTRAS=tensorrt --build-arg VENV_FLAGS=--system-site-packages -t resnest-deploy:trt .
#   docker build --target runtime --build-arg BASE=nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime \
#       --build-arg VENV_FLAGS=--system-site-packages -t resnest-deploy:jetson .   # JetPack 6, Python 3.10
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
# PIP_CERT (a CA bundle path for pip, e.g. a mounted host bundle) is only set when passed
ARG PIP_CERT
ARG VENV_FLAGS=
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# A venv keeps Debian's Python (PEP 668) and the NGC/L4T system packages untouched.
RUN python3 -m venv ${VENV_FLAGS} /opt/venv && pip install --upgrade "pip==25.3" \
 && useradd --uid 10001 --create-home deploy && install -d -o 10001 -g 10001 /work
WORKDIR /opt/resnest-deploy
COPY pyproject.toml README.md ./
COPY resnest_deploy ./resnest_deploy

FROM base AS runtime
ARG PIP_CERT
ARG EXTRAS=
# hadolint ignore=DL3013
RUN pip install ".${EXTRAS:+[$EXTRAS]}"
USER 10001
WORKDIR /work
ENTRYPOINT ["resnest-deploy"]
CMD ["--help"]

FROM base AS serve
ARG PIP_CERT
# nvidia-pytriton is used for the tritonserver it bundles; --no-deps: its numpy<2 pin is for its
# Python API, which this image does not use.
# hadolint ignore=DL3013
RUN pip install ".[serve]" && pip install --no-deps "nvidia-pytriton==0.7.0"
USER 10001
WORKDIR /work
EXPOSE 8000 8001 8002
# The health check reads the ports serve really listens on (--http-port included) from its status file.
# start-period: 3x serve's measured start to ready of resnest50 INT8, cold, on 2 cores (31.2 s,
# benchmarks/results/first_inference.md), as the Kubernetes startup probe of `k8s` allows
HEALTHCHECK --interval=15s --timeout=5s --start-period=94s --retries=3 \
    CMD ["python", "-c", "import json, sys, urllib.request; s = json.load(open('/tmp/resnest-deploy-serve.json')); sys.exit(urllib.request.urlopen('http://' + s['http'] + '/v2/health/ready', timeout=4).status != 200)"]
# Other machines reach a container only through 0.0.0.0; serve's own default is 127.0.0.1.
# The python backend moves tensors through /dev/shm: run with --shm-size=256m (Docker's default is 64 MB).
ENTRYPOINT ["resnest-deploy", "serve", "--host", "0.0.0.0", "--status-file", "/tmp/resnest-deploy-serve.json"]
CMD ["--help"]

FROM base AS full
ARG PIP_CERT
ARG EXTRAS=export,rtx,quant
# where the CPU build of torch comes from: PyTorch's CPU index, or (scripts/build_image.sh) a mounted
# folder of wheels: --build-arg TORCH_PIP_ARGS="--find-links /wheels"
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# hadolint ignore=DL3013,SC2086
RUN pip install "torch==2.13.0" ${TORCH_PIP_ARGS} && pip install ".[${EXTRAS}]"
USER 10001
WORKDIR /work
ENTRYPOINT ["resnest-deploy"]
CMD ["--help"]
