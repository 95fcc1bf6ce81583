"""The package as a user gets it: the wheel, installed in a fresh venv, run from a temp folder.

An editable install and a suite run from the source tree see every file of the tree; a module or a
data file missing from the wheel stays invisible there. This builds the wheel, installs it (no
dependencies: those come from this environment through a path file, so nothing is downloaded) into a
new venv, and runs commands from the venv's console script, by absolute path, in a temp folder, with
no venv on PATH.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    home = cwd.parent / "home"  # runtime caches go under ~/.cache, never into the working folder
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_installs_in_a_fresh_venv_and_its_console_script_runs_from_a_temp_folder(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("resnest_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("digits.npz", "resnest14d_digits.safetensors", "imagenet_classes.txt"):
        assert f"resnest_deploy/data/{data}" in names
    assert "resnest_deploy/serving/triton_model.py" in names  # copied into Triton repositories

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # dependencies from this environment, after the venv's own site-packages (no .pth processing:
    # this environment's editable finder is not installed there)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (fresh_site / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")

    work = tmp_path / "work"
    work.mkdir()
    where = run([str(python), "-c", "import resnest_deploy; print(resnest_deploy.__file__)"], work)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(fresh_site)), where
    cli = str(venv / "bin" / "resnest-deploy")
    exported = run([cli, "export", "--arch", "resnest14d_digits", "-o", "m.onnx"], work)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (work / "m.onnx").is_file() and (work / "m.onnx.json").is_file()
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(work / "blank.png")
    predicted = run([cli, "predict", "m.onnx", "blank.png", "--json"], work)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    checked = run([cli, "check", "m.onnx", "--reference", "recorded"], work)
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr[-2000:]
    assert sorted(os.listdir(work)) == ["blank.png", "m.onnx", "m.onnx.json"]  # nothing written elsewhere
    assert (tmp_path / "home" / ".cache" / "resnest_deploy").is_dir()  # ONNX Runtime's optimized graph
