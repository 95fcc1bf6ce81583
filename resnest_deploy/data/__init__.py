"""Inputs: images preprocessed as each arch was evaluated, labelled folders, and the bundled digits.

Pillow and NumPy only (torchvision does not import beside every torch build), reproducing timm's eval
transform exactly: torchvision's ``Resize(int(input_size / crop_pct))`` (shorter side, longer side
truncated), ``CenterCrop(input_size)`` (offsets rounded), scale to [0, 1], normalise, NCHW float32.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnest_deploy.errors import ArtifactError, ImageError
from resnest_deploy.models.registry import PretrainedCfg

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
#: the formats Pillow may decode (what the suffixes above name): a file is opened by its content, and
#: Pillow knows formats that run other programs (EPS runs Ghostscript) or are rarely fuzzed
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
RESAMPLE_NAMES = frozenset(_RESAMPLE)


@dataclass(frozen=True)
class Transform:
    """An arch's eval transform as plain numbers (also what the sidecars record). ``size`` is the
    crop's height; ``width`` differs from it only for non-square inputs."""

    size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    width: int | None = None

    @classmethod
    def from_pretrained(
        cls, cfg: PretrainedCfg, size: int | None = None, width: int | None = None
    ) -> Transform:
        size = size or cfg.input_size
        width = None if width in (None, size) else width
        return cls(size, int(size / cfg.crop_pct), cfg.interpolation, cfg.mean, cfg.std, width)

    @property
    def hw(self) -> tuple[int, int]:
        return self.size, self.width or self.size

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """torchvision's ``Resize(int)``: the shorter side to ``resize``, the longer one truncated.
        A non-square crop H x W follows timm: ``Resize((H / crop_pct, W / crop_pct))``, exactly."""
        if self.width is not None:
            return int(self.width * self.resize / self.size), self.resize
        if w <= h:
            return self.resize, int(self.resize * h / w)
        return int(self.resize * w / h), self.resize

    def crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """torchvision's ``CenterCrop``: offsets rounded half to even, as Python's ``round``."""
        ch, cw = self.hw
        left, top = round((w - cw) / 2.0), round((h - ch) / 2.0)
        return left, top, left + cw, top + ch

    def frame(self, image: Image.Image) -> np.ndarray:
        """The resized, centre-cropped RGB pixels (H x W x 3 uint8): what a camera pipeline hands a
        file exported with a uint8 input form."""
        image = to_rgb8(image)
        size = self.resized(*image.size)
        image = image.resize(size, _RESAMPLE[self.interpolation])
        return np.asarray(image.crop(self.crop_box(*size)), dtype=np.uint8)

    def __call__(self, image: Image.Image) -> np.ndarray:
        x: np.ndarray = self.frame(image).astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


#: images above this many pixels are refused before decoding (a 30000x30000 header is a bomb)
MAX_PIXELS = 64_000_000
#: and no image may be longer than this many times its width (or the reverse): resizing the shorter
#: side to the eval size multiplies the longer one (a 1 x 60,000,000 image asked for ~245 GB)
MAX_ASPECT = 20


def to_rgb8(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel, scaled from whatever the file holds. Pillow's own ``convert``
    clips 16-bit and float images instead of scaling them (16-bit PNGs come out white, float TIFFs
    black), so those are scaled here, and what cannot be scaled without guessing is refused."""
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{w}x{h} pixels is more than {MAX_PIXELS:,}; downscale the image first")
    if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
        raise ImageError(
            f"{w}x{h} pixels is a strip (aspect ratio above {MAX_ASPECT}:1); resizing its shorter side "
            "would make it enormous: crop it first"
        )
    mode = image.mode
    if mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "1", "La", "RGBa"):
        return image.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        x = np.asarray(image, dtype=np.float64)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not np.isfinite(x).all():
            raise ImageError(f"{mode} image with NaN or Inf pixels")
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scale = 255.0
        elif mode != "F" and lo >= 0 and hi <= 65535:
            scale = 255.0 / 65535.0  # 16-bit samples (PNG, TIFF), also when Pillow opens them as I
        else:
            raise ImageError(
                f"{mode} image with values in [{lo:g}, {hi:g}]: not 16-bit or [0, 1] float; "
                "convert it to 8-bit RGB"
            )
        grey = Image.fromarray(np.clip(np.rint(x * scale), 0, 255).astype(np.uint8))
        return grey.convert("RGB")
    raise ImageError(f"image mode {mode} is not supported; convert it to 8-bit RGB")


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``root``, recursively, in a stable order."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{root} is a file, not a folder; pass a directory of jpg/png/webp files")
    if not root.is_dir():
        raise ArtifactError(f"image folder not found: {root}; pass a directory of jpg/png/webp files")
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or (p.is_symlink() and not p.exists()))
    )  # a dangling link is kept, so that loading lists it as skipped


def sample(paths: Sequence[Path], count: int | None, seed: int = 0) -> list[Path]:
    """A deterministic subset: the same folder and seed always give the same images."""
    if count is None or count >= len(paths):
        return list(paths)
    return sorted(random.Random(seed).sample(list(paths), count))


@dataclass
class LoadedImages:
    array: np.ndarray  # N, 3, H, W float32
    paths: list[Path]
    skipped: list[tuple[Path, str]]  # unreadable files and why
    #: sha256 of each decoded file's bytes (as read), in the order of ``paths``: a copy or a hard
    #: link of an image is the same image, whatever its path
    digests: list[str] = field(default_factory=list)


def load_images(
    paths: Iterable[Path], transform: Transform, advance: Callable[[int], None] | None = None
) -> LoadedImages:
    """Decode and preprocess; files that do not decode are skipped and reported, not fatal. Each
    file is read once, and what is read is both hashed and decoded."""
    arrays, kept, skipped, digests = [], [], [], []
    for path in paths:
        if path.is_symlink() and not path.exists():
            skipped.append((path, "a link to nothing (dangling symlink)"))
            if advance:
                advance(1)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                raw = path.read_bytes()
                with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
                    arrays.append(transform(im))
            kept.append(path)
            digests.append(hashlib.sha256(raw).hexdigest())
        except ImageError as e:
            skipped.append((path, str(e)))
        except UnidentifiedImageError:
            skipped.append((path, f"not a {'/'.join(IMAGE_FORMATS)} image"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append((path, type(e).__name__))
        except Image.DecompressionBombWarning:
            skipped.append((path, "DecompressionBombError"))
        if advance:
            advance(1)
    empty = np.zeros((0, 3, *transform.hw), np.float32)
    return LoadedImages(np.stack(arrays) if arrays else empty, kept, skipped, digests)


def labelled_folder(
    root: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    skipped: list[str] | None = None,
) -> list[tuple[Path, int]]:
    """``root/<class>/*.jpg`` to (path, label). A class folder is an integer index, or a name found
    in ``class_names`` (ImageNet synset ids such as ``n01440764``). A label the model cannot produce
    (``num_classes``) is refused; entries that cannot be read are listed in ``skipped``."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{root} is a file, not a folder; pass DIR with one sub-folder per class")
    if not root.is_dir():
        raise ArtifactError(f"labelled folder not found: {root}; pass DIR with one sub-folder per class")
    lookup = {name: i for i, name in enumerate(class_names or ())}
    items = []
    for sub in sorted(root.iterdir()):
        if not sub.is_dir():
            if not sub.is_file() and skipped is not None:  # a dangling link, a socket: say so
                skipped.append(f"{sub}: not a folder or a file")
            continue
        if sub.name in lookup:
            label = lookup[sub.name]
        elif sub.name.isascii() and sub.name.isdigit():  # not '²' or '٣', which int() refuses
            label = int(sub.name)
        else:
            raise ArtifactError(
                f"class folder {sub.name!r} is neither a class index nor a known synset id; "
                "name sub-folders 0, 1, ... or n01440764, ..."
            )
        if num_classes is not None and label >= num_classes:
            raise ArtifactError(
                f"class folder {sub.name!r} is label {label}, but the model has {num_classes} classes "
                f"(0..{num_classes - 1}); remove it or evaluate a model that has it"
            )
        try:
            found = find_images(sub)
        except OSError as e:
            if skipped is not None:
                skipped.append(f"{sub}: {e.strerror or e}")
            continue
        if not os.access(sub, os.R_OK | os.X_OK) and skipped is not None:
            skipped.append(f"{sub}: not readable")
        items += [(p, label) for p in found]
    if not items:
        raise ArtifactError(f"no images under {root}/<class>/; expected one sub-folder per class")
    return items


def fingerprint(paths: Sequence[Path], transform: Transform) -> str:
    """Identifies a calibration set (files, sizes, mtimes, transform) for caching."""
    h = hashlib.sha256(repr(transform).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def random_inputs(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Seeded, normalised-image-like inputs, exactly ``count`` of them, the same on every machine."""
    return np.random.default_rng(seed).standard_normal((count, 3, *size), dtype=np.float32)


def random_frames(
    count: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], seed: int = 0
) -> np.ndarray:
    """Seeded random uint8 pixels, normalised: inputs that a file taking frames holds exactly."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 3, *size), dtype=np.uint8).astype(np.float32) / np.float32(255)
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return ((pixels - m) / s).astype(np.float32)


# -- the bundled digits ---------------------------------------------------------------------------


def digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 handwritten digits (uint8, 0..255) and labels, split as the model was trained.

    Shipped as a 30 kB ``.npz`` so the digits model can be calibrated and evaluated offline.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    path = importlib.resources.files("resnest_deploy") / "data" / "digits.npz"
    with path.open("rb") as f, np.load(f) as z:
        return z[f"{split}_images"], z[f"{split}_labels"]


def digits_batch(images: np.ndarray, transform: Transform) -> np.ndarray:
    """8x8 digits through the same Pillow transform as any image file."""
    return np.stack([transform(Image.fromarray(im)) for im in images])
