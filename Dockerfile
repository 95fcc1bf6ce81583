# resnest-deploy as a pipeline step. Two targets:
#
#   full     (default) export, quantize, build (TensorRT-RTX builds on the CPU), check, bench.
#   runtime  no PyTorch: predict, bench, eval, inspect, and check against the PyTorch outputs
#            recorded at export; for edge devices that run engines and ONNX files.
#
#   docker build -t resnest-deploy .
#   docker build --target runtime -t resnest-deploy:runtime .
#   docker run --rm -v "$PWD/models:/work/models" resnest-deploy pipeline --arch resnest14d_digits -p int8
#
# GPU and Jetson bases (TensorRT comes with the image; the venv sees it through system site-packages):
#   docker build --target runtime --build-arg BASE=nvcr.io/nvidia/tensorrt:24.08-py3 \
#       --build-arg EXTRAS=tensorrt --build-arg VENV_FLAGS=--system-site-packages -t resnest-deploy:trt .
#   docker build --target runtime --build-arg BASE=nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime \
#       --build-arg VENV_FLAGS=--system-site-packages -t resnest-deploy:jetson .   # JetPack 6, Python 3.10
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
ARG VENV_FLAGS=
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# A venv keeps Debian's Python (PEP 668) and the NGC/L4T system packages untouched.
RUN python3 -m venv ${VENV_FLAGS} /opt/venv && pip install --upgrade pip
WORKDIR /opt/resnest-deploy
COPY pyproject.toml README.md ./
COPY resnest_deploy ./resnest_deploy

FROM base AS runtime
ARG EXTRAS=
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && useradd --create-home deploy
USER deploy
WORKDIR /work
ENTRYPOINT ["resnest-deploy"]
CMD ["--help"]

FROM base AS full
ARG EXTRAS=export,rtx,quant
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}" \
 && pip install ".[${EXTRAS}]" && useradd --create-home deploy
USER deploy
WORKDIR /work
ENTRYPOINT ["resnest-deploy"]
CMD ["--help"]
