"""Export what the runtime tests run on elsewhere: the digits model in FP32 and CPU INT8, with sidecars.

    python scripts/runtime_artifacts.py OUT_DIR

CI runs this in the main venv (it needs PyTorch), then points a torch-free Python 3.10 venv at
OUT_DIR through RESNEST_DEPLOY_RUNTIME_ARTIFACTS to run tests/test_runtime.py there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from resnest_deploy.data import Transform
from resnest_deploy.export import export_onnx
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert

ARCH = "resnest14d_digits"


def main(out: Path) -> None:
    model, info = load_model(ARCH, "pretrained")
    fp32 = export_onnx(model, out / "digits.onnx", weights=info).path
    calib = calibration.from_digits(Transform.from_pretrained(get_spec(ARCH).pretrained))
    convert(
        fp32,
        out / "digits.int8-cpu.onnx",
        ConversionConfig("int8", "cpu"),
        calib,
        RunOptions(use_cache=False),
    )
    print(f"wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
