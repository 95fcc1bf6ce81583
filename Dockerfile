# resnest-deploy as a pipeline step: export, quantize, build (TensorRT-RTX builds on the CPU), check, bench.
#
#   docker build -t resnest-deploy .
#   docker run --rm -v "$PWD/models:/work/models" resnest-deploy pipeline --arch resnest14d_digits -p int8
#   docker run --rm -v "$PWD:/work" resnest-deploy export --arch resnest50 --weights /work/ckpt.pth
#
# GPU hosts: build FROM an NVIDIA TensorRT image with EXTRAS=tensorrt,quant and run with --gpus all.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRAS=rtx,quant
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/resnest-deploy
COPY pyproject.toml README.md ./
COPY resnest_deploy ./resnest_deploy
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}" \
 && pip install ".[${EXTRAS}]"
WORKDIR /work
ENTRYPOINT ["resnest-deploy"]
CMD ["--help"]
