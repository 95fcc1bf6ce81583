#!/usr/bin/env bash
# Build the project's Docker image without a Docker daemon, as CI does: Debian's debootstrap makes a
# local base image (bookworm, Python 3.11 with its shared libpython, like python:3.11-slim), podman builds the
# Dockerfile on it with chroot isolation, for every target. Prints each image's size.
#
#   sudo scripts/build_image.sh                     # targets: runtime serve full
#   TARGETS=runtime scripts/build_image.sh
#   FRESH=1 scripts/build_image.sh                  # also rebuild the debootstrap base (CI does)
#   ARM64=1 scripts/build_image.sh                  # also the runtime image for linux/arm64 (qemu)
#
# Needs root, podman and debootstrap (apt-get install podman debootstrap). With Docker, users run the
# usual `docker build --target T .` instead. pip inside the build uses the host's CA bundle (mounted),
# and the full target takes torch from a local wheel folder when WHEELS names one (else PyTorch's
# CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${TARGETS:-"runtime serve full"}
TAG=${TAG:-localhost/resnest-deploy}
BASE=${BASE_IMAGE:-localhost/debian-py:bookworm}
WHEELS=${WHEELS:-/opt/wheels}
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

mirror() {  # the Debian mirror this machine's apt uses
  awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
    awk '/^deb / {print $2; exit}' /etc/apt/sources.list
}

if [ "${FRESH:-0}" = 1 ] && podman image exists "$BASE"; then
  podman rmi -f "$BASE" >/dev/null
fi
if ! podman image exists "$BASE"; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap bookworm into $rootfs from $(mirror)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,libpython3.11 \
    bookworm "$rootfs" "$(mirror)" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
fi

# docker format: the OCI format has no HEALTHCHECK, and podman drops it with a warning
args=(--format docker --isolation chroot --build-arg "BASE=$BASE")
if [ -f "$CA" ]; then
  args+=(-v "$(dirname "$CA"):/hostcerts:ro" --build-arg "PIP_CERT=/hostcerts/$(basename "$CA")")
fi
if ls "$WHEELS"/torch-*.whl >/dev/null 2>&1; then
  args+=(-v "$WHEELS:/wheels:ro" --build-arg "TORCH_PIP_ARGS=--find-links /wheels")
fi
for target in $TARGETS; do
  echo "building $TAG:$target"
  podman build "${args[@]}" --target "$target" -t "$TAG:$target" . >"build-$target.log" 2>&1 ||
    { tail -20 "build-$target.log"; exit 1; }
  rm -f "build-$target.log"
done
# The runtime image for linux/arm64 (Jetson-class devices): an arm64 debootstrap base and the same
# Dockerfile, its RUN steps executed by qemu-user through binfmt (Debian's qemu-user-static).
if [ "${ARM64:-0}" = 1 ]; then
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
  fi
  BASE64="$BASE-arm64"
  if [ "${FRESH:-0}" = 1 ] && podman image exists "$BASE64"; then
    podman rmi -f "$BASE64" >/dev/null
  fi
  if ! podman image exists "$BASE64"; then
    rootfs64=$(mktemp -d)
    echo "debootstrap bookworm (arm64, emulated) into $rootfs64"
    debootstrap --arch=arm64 --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates,libpython3.11 bookworm "$rootfs64" "$(mirror)" >/dev/null
    tar -C "$rootfs64" -c . | podman import --arch arm64 - "$BASE64" >/dev/null
    rm -rf "$rootfs64"
  fi
  echo "building $TAG:runtime-arm64 (emulated)"
  podman build "${args[@]}" --platform linux/arm64 --build-arg "BASE=$BASE64" --target runtime \
    -t "$TAG:runtime-arm64" . >build-runtime-arm64.log 2>&1 || { tail -20 build-runtime-arm64.log; exit 1; }
  rm -f build-runtime-arm64.log
fi
for image in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep -F "$TAG:" | sort); do
  echo "$image $(podman image inspect --format '{{.Architecture}} {{.Size}}' "$image")"
done
