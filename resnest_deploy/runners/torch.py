"""PyTorch eager, the reference every artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch

from resnest_deploy.errors import ArtifactError
from resnest_deploy.runners.base import Runner


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str = "cpu", name: str | None = None) -> None:
        super().__init__(name or f"torch-{device}")
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
        self.backend = f"torch-{torch.device(device).type}"
        self.model = model
        self.device = torch.device(device)

    def activate_impl(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ArtifactError(
                f"torch:{self.device} needs a CUDA GPU and a CUDA build of torch (this is torch "
                f"{torch.__version__}, {'no GPU visible' if torch.version.cuda else 'a CPU-only build'}); "
                "use 'torch' for the CPU"
            )
        self.model.eval().to(self.device)
        if self.device.type == "cuda":  # time the forward on the GPU, not the copies around it
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    @torch.inference_mode()
    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(x).to(self.device)
        if self._events:
            self._events[0].record()
        out = self.model(inp)
        if self._events:
            self._events[1].record()
        return out.float().cpu().numpy()

    def device_time_ms(self) -> float | None:
        if not self._events:
            return None
        start, end = self._events
        end.synchronize()
        return float(start.elapsed_time(end))
