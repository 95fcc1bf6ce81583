"""What an exported file looks like from outside: names, opsets and input formats (no torch)."""

from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
#: 13 is the first with Split taking sizes as an input; 20 is the newest the TorchScript exporter writes.
OPSET_RANGE = (13, 20)
