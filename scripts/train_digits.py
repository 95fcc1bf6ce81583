"""Train the bundled ``resnest14d_digits`` model on scikit-learn's handwritten digits.

Writes ``resnest_deploy/data/digits.npz`` (the fixed train/test split, 8x8 uint8) and
``resnest_deploy/data/resnest14d_digits.safetensors``. CPU only, about two minutes on two cores:

    python scripts/train_digits.py            # needs scikit-learn (the dev extra)

The point is a model with real, trained weight and activation statistics to measure FP16/INT8
conversion error on; random weights say little about quantization.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from resnest_deploy.data import Transform, digits_batch
from resnest_deploy.models import create_model, get_spec

DATA = Path(__file__).resolve().parents[1] / "resnest_deploy" / "data"
ARCH = "resnest14d_digits"


def write_split(seed: int) -> None:
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels to 0..255
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, d.target, test_size=0.5, random_state=seed, stratify=d.target
    )
    np.savez_compressed(
        DATA / "digits.npz",
        train_images=x_tr,
        train_labels=y_tr.astype(np.int64),
        test_images=x_te,
        test_labels=y_te.astype(np.int64),
    )


def shift(x: torch.Tensor, max_px: int) -> torch.Tensor:
    """Random translation by up to ``max_px``: the only augmentation 1,437 digits need."""
    pad = F.pad(x, (max_px,) * 4, value=float(x.min()))
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(torch.randint(0, 2 * max_px + 1, (n, 2)).tolist()):
        out[i] = pad[i, :, dy : dy + h, dx : dx + w]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    write_split(args.seed)

    from resnest_deploy.data import digits

    transform = Transform.from_pretrained(get_spec(ARCH).pretrained)
    (x_tr, y_tr), (x_te, y_te) = digits("train"), digits("test")
    xt, yt = torch.from_numpy(digits_batch(x_tr, transform)), torch.from_numpy(y_tr)
    xe, ye = torch.from_numpy(digits_batch(x_te, transform)), torch.from_numpy(y_te)

    model = create_model(ARCH).train()
    steps = args.epochs * (len(xt) // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt) - 63, 64):  # no ragged last batch: BN on 2 images is noise
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(shift(xt[idx], 2)), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xe).argmax(1) == ye).float().mean().item()
        print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  test top-1 {acc:.2%}  {time.time() - t0:.0f}s")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, DATA / f"{ARCH}.safetensors", metadata={"arch": ARCH, "test_top1": f"{acc:.4f}"})
    print(f"wrote {DATA / f'{ARCH}.safetensors'}: test top-1 {acc:.2%} on {len(xe)} images")


if __name__ == "__main__":
    main()
