"""Run the built images' own files, as CI does where `podman run` is not allowed.

    python scripts/check_image.py [--tag localhost/resnest-deploy]

For each target (built by scripts/build_image.sh) a container is created, its root filesystem mounted
(`podman mount`), and commands run in it with `chroot` as the image's user (uid 10001), with /proc and
/dev bound in: `resnest-deploy --version` in every image, no torch in `runtime`, the README's pipeline
on the digits model in `full`, and in `serve` a Triton server on 127.0.0.1 answering a tritonclient
request from this machine, equal to the same file run here. Every process is bounded in time and
stopped by its own pid; every mount is undone. Ends with 'N passed, N failed'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

USER = "10001:10001"
ENV = ["HOME=/home/deploy", "PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]


@contextlib.contextmanager
def container_root(image: str) -> Iterator[Path]:
    """A writable root filesystem of a new (never started) container of ``image``."""
    cid = subprocess.run(
        ["podman", "create", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = Path(
        subprocess.run(["podman", "mount", cid], capture_output=True, text=True, check=True).stdout.strip()
    )
    mounted: list[Path] = []
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"])):
            (root / what).mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(root / what)], check=True)
            mounted.append(root / what)
        yield root
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(m)], check=False)
        subprocess.run(["podman", "umount", cid], capture_output=True, check=False)
        subprocess.run(["podman", "rm", "-f", cid], capture_output=True, check=False)


def inside(root: Path, *cmd: str) -> list[str]:
    return ["chroot", f"--userspec={USER}", str(root), "/usr/bin/env", "-i", *ENV, *cmd]


def run(root: Path, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(inside(root, *cmd), capture_output=True, text=True, timeout=timeout)


def check_version(image: str) -> str:
    from resnest_deploy import __version__

    with container_root(image) as root:
        out = run(root, "resnest-deploy", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"resnest-deploy {__version__}", out
    return out.stdout.strip()


def check_runtime_has_no_torch(image: str) -> str:
    with container_root(image) as root:
        out = run(root, "python", "-c", "import importlib.util as u; print(u.find_spec('torch') is None)")
    assert out.stdout.strip() == "True", out
    return "no torch in the runtime image"


def check_pipeline(image: str, keep: Path) -> str:
    with container_root(image) as root:
        out = run(
            root, "sh", "-c", "cd /work && resnest-deploy pipeline --arch resnest14d_digits --precision int8"
        )
        assert out.returncode == 0, out.stderr[-2000:]
        folder = root / "work" / "models" / "resnest14d_digits"
        report = json.loads((folder / "report.json").read_text())
        assert report["status"] == "ok", report["status"]
        for name in ("resnest14d_digits.onnx", "resnest14d_digits.onnx.json"):
            shutil.copy(folder / name, keep / name)
    return f"pipeline in the image: {', '.join(report['steps'])}"


def check_runtime_arm64(image: str, keep: Path) -> str:
    """The plain install on linux/arm64, run under qemu-user: predict, check against the recorded
    references, bench; the answers equal the same file run here. /sys is not bound: with the host's
    /sys, ONNX Runtime's CPU detection picked kernels that crashed under qemu."""
    from PIL import Image

    from resnest_deploy.predict import predict

    machine = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Architecture}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert machine == "arm64", f"{image} is {machine}, not arm64"
    onnx_file = keep / "resnest14d_digits.onnx"
    Image.fromarray((np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)).save(
        keep / "probe.png"
    )
    here = predict([keep / "probe.png"], str(onnx_file), topk=3)[0].top
    with container_root(image) as root:
        for f in (onnx_file, Path(f"{onnx_file}.json"), keep / "probe.png"):
            shutil.copy(f, root / "work" / f.name)
            shutil.chown(root / "work" / f.name, 10001, 10001)
        uname = run(root, "uname", "-m")
        assert uname.stdout.strip() == "aarch64", uname
        m = f"/work/{onnx_file.name}"
        predicted = run(
            root, "resnest-deploy", "predict", m, "/work/probe.png", "--topk", "3", "--json", timeout=900
        )
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        there = json.loads(predicted.stdout)[0]["top"]
        assert [t["index"] for t in there] == [i for i, _, _ in here]
        assert max(abs(t["probability"] - p) for t, (_, _, p) in zip(there, here, strict=True)) < 1e-4
        checked = run(root, "resnest-deploy", "check", m, "--reference", "recorded", "--json", timeout=900)
        assert checked.returncode == 0 and json.loads(checked.stdout)["passed"], checked.stderr[-2000:]
        timed = run(root, "resnest-deploy", "bench", m, "-b", "1", "-n", "3", "--json", timeout=900)
        assert timed.returncode == 0, timed.stderr[-2000:]
        p50 = json.loads(timed.stdout)[0]["p50_ms"]
    return f"aarch64 (emulated): predict equal to here, recorded check passed, bench p50 {p50:.1f} ms"


def check_serve(image: str, onnx_file: Path) -> str:
    import tritonclient.http as httpclient

    from resnest_deploy.loaders import open_runner
    from resnest_deploy.serving.server import Ports

    ports = Ports.free()
    http, grpc, metrics = ports.http, ports.grpc, ports.metrics
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with open_runner(onnx_file) as runner:
        expected = runner.infer(x)
    with container_root(image) as root:
        for f in (onnx_file, Path(f"{onnx_file}.json")):
            shutil.copy(f, root / "work" / f.name)
            shutil.chown(root / "work" / f.name, 10001, 10001)

        def inspect(field: str) -> Any:
            return json.loads(
                subprocess.run(
                    ["podman", "image", "inspect", "--format", "{{json .Config." + field + "}}", image],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )

        config = {"Entrypoint": inspect("Entrypoint"), "Healthcheck": inspect("Healthcheck")}
        health = (config.get("Healthcheck") or {}).get("Test") or []
        assert health[:1] == ["CMD"], f"the image has no HEALTHCHECK CMD: {config.get('Healthcheck')}"
        # the image's own entrypoint, kept on loopback here (the last --host wins)
        cmd = [*config["Entrypoint"], f"/work/{onnx_file.name}", "--host", "127.0.0.1"]
        cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        proc = subprocess.Popen(inside(root, *cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", proc, 180)
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=60)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer(onnx_file.stem, [inp]).as_numpy("logits")
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            healthy = subprocess.run(inside(root, *health[1:]), capture_output=True, text=True, timeout=30)
            assert healthy.returncode == 0, f"HEALTHCHECK failed on port {http}: {healthy.stderr[-500:]}"
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return (
        f"serve (the image's entrypoint) answered from outside, equal to the runner here; its HEALTHCHECK "
        f"passed on --http-port {http}"
    )


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}"[-2000:])
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="localhost/resnest-deploy")
    ap.add_argument("--arm64", action="store_true", help="also check the linux/arm64 runtime image")
    args = ap.parse_args()
    keep = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    checks: list[tuple[str, Callable[[], str]]] = [
        *(
            (f"{t}: --version", lambda t=t: check_version(f"{args.tag}:{t}"))
            for t in ("runtime", "serve", "full")
        ),
        ("runtime: no torch", lambda: check_runtime_has_no_torch(f"{args.tag}:runtime")),
        ("full: README pipeline", lambda: check_pipeline(f"{args.tag}:full", keep)),
        (
            "serve: tritonclient from outside",
            lambda: check_serve(f"{args.tag}:serve", keep / "resnest14d_digits.onnx"),
        ),
    ]
    if args.arm64:
        checks.append(
            (
                "runtime-arm64: predict, check, bench",
                lambda: check_runtime_arm64(f"{args.tag}:runtime-arm64", keep),
            )
        )
    passed = failed = 0
    for name, check in checks:
        started = time.monotonic()
        try:
            detail = check()
            passed += 1
            print(f"PASS {name} ({time.monotonic() - started:.0f} s): {detail}")
        except Exception as e:  # report every check, then fail the run
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[-1500:]}")
    shutil.rmtree(keep, ignore_errors=True)
    print(f"image checks: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
