"""Run the CLI in a process where ``import torch`` fails, and report whether anything tried it.

``python tests/no_torch.py ARGS...`` behaves as ``resnest-deploy ARGS...`` on an edge device that has
no PyTorch; its last stderr line lists the torch modules that got imported (there must be none).
"""

from __future__ import annotations

import atexit
import importlib.abc
import sys


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.split(".")[0] == "torch":
            raise ImportError(f"{name} is not installed here (blocked to test the runtime install)")


sys.meta_path.insert(0, _NoTorch())
atexit.register(
    lambda: print(
        f"torch modules: {sorted(m for m in sys.modules if m.startswith('torch'))}", file=sys.stderr
    )
)

if __name__ == "__main__":
    from resnest_deploy.cli.app import main

    sys.argv[0] = "resnest-deploy"
    main()
