"""PyTorch eager, the reference every artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch

from resnest_deploy.runners.base import Runner


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str = "cpu", name: str | None = None) -> None:
        super().__init__(name or f"torch-{device}")
        self.backend = f"torch-{torch.device(device).type}"
        self.model = model
        self.device = torch.device(device)

    def activate_impl(self) -> None:
        self.model.eval().to(self.device)

    @torch.inference_mode()
    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(x).to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out.float().cpu().numpy()
