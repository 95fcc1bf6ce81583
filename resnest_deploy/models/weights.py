"""Checkpoint resolution: published weights, local files and URLs, verified and cached.

Official weights come from the ResNeSt GitHub releases into ``torch.hub``'s cache (under
``$TORCH_HOME/hub/checkpoints``, sha256 prefix in the file name checked); timm's come from the
Hugging Face Hub through ``huggingface_hub`` (its cache, resumable downloads and offline mode).
Nothing is ever unpickled beyond tensors (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.resources
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

from resnest_deploy import _deps
from resnest_deploy._io import sha256_file
from resnest_deploy.errors import WeightsError, first_line
from resnest_deploy.models.config import WeightsInfo
from resnest_deploy.models.registry import OFFICIAL_RELEASES, ModelSpec

StateDict = dict[str, torch.Tensor]

MIRROR_ENV = "RESNEST_DEPLOY_WEIGHTS_MIRROR"
OFFLINE_ENVS = ("RESNEST_DEPLOY_OFFLINE", "HF_HUB_OFFLINE")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z]+$")
_NESTING_KEYS = ("state_dict", "model", "model_state_dict")


def is_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_checkpoint(path: str | os.PathLike[str]) -> StateDict:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file into a flat, prefix-free state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"checkpoint not found: {path}; check the path or use {{weights=pretrained|random}}",
            param="weights",
        )
    try:
        if path.suffix == ".safetensors":
            st = _deps.require("safetensors.torch")
            obj = st.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        reason = first_line(e, 160)
        if reason.startswith("Weights only load failed"):
            reason = "safe loading (weights_only) refused it: it is not a plain pickle of tensors"
        raise WeightsError(
            f"cannot read checkpoint {path}: {reason}; the file is truncated or not a "
            "PyTorch/safetensors state dict (re-download or re-save it with torch.save(model.state_dict()))"
        ) from e
    state_dict = _flatten(obj, path)
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(
                f"checkpoint {path} holds NaN or Inf in {key}; the file is corrupt or from a diverged run, "
                "use a good checkpoint"
            )
    return state_dict


def _flatten(obj: object, path: Path) -> StateDict:
    while isinstance(obj, dict):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} holds no state dict of tensors; save one with torch.save(model.state_dict())"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def url_cache_path(url: str) -> Path:
    """Where a checkpoint URL is cached: keyed by the whole URL, so two URLs that end in the same
    file name never share an entry, and no URL can name a path outside the cache."""
    name = Path(urlparse(url).path).name
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        name = "checkpoint.pth"
    key = hashlib.sha256(url.encode()).hexdigest()[:20]
    return checkpoint_dir() / "urls" / key / name


def _download(url: str, dest: Path, *, allowed: bool = True) -> Path:
    """Fetch ``url`` into the cache at ``dest``: resumable, length- and hash-checked, atomic.

    ``torch.hub.download_url_to_file`` is not used because it caches a transfer cut short as if
    it were whole; here bytes go to ``dest.partial`` (resumed with a Range request next time) and
    are renamed to ``dest`` only once their length and sha256 prefix check out.
    """
    if dest.is_file():
        return dest
    if not allowed:
        raise WeightsError(
            f"the reference weights {url} named by the artifact's metadata are not cached here, and URLs "
            f"read from a file are never fetched; pass {{weights}} {url} to download them",
            param="weights",
        )
    if is_offline():
        raise WeightsError(
            f"offline and {dest.name} is not cached at {dest}; copy the file there or pass {{weights=PATH}}",
            param="weights",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    done = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            if resp.status != 206:  # server ignored the range: start over
                done = 0
            total = done + int(resp.headers.get("Content-Length") or 0)
            with open(partial, "ab" if done else "wb") as f, _progress_bar(dest.name, total, done) as advance:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    f.write(chunk)
                    advance(len(chunk))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        raise WeightsError(
            f"cannot download {url} ({reason}); retry to resume, or fetch it elsewhere and put it at {dest} "
            "or pass {weights=PATH}",
            param="weights",
        ) from e
    size = partial.stat().st_size
    if total and size != total:
        raise WeightsError(f"download of {url} stopped at {size} of {total} bytes; retry to resume")
    m = _HASH_IN_NAME.search(dest.name)
    digest = sha256_file(partial)
    if m and not digest.startswith(m.group(1)):
        partial.unlink()
        raise WeightsError(
            f"download of {url} rejected: sha256 {digest[:8]} does not match {m.group(1)} in its name; "
            "the file is corrupt or was replaced"
        )
    os.replace(partial, dest)
    return dest


@contextlib.contextmanager
def _progress_bar(name: str, total: int, done: int) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda _n: None
        return
    with Progress(
        *Progress.get_default_columns(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"downloading {name}", total=total or None, completed=done)
        yield lambda n: bar.advance(task, n)


def _verify_hash_prefix(path: Path) -> str:
    digest = sha256_file(path)
    m = _HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise WeightsError(
            f"{path} fails its sha256 check (name says {m.group(1)}, content is {digest[:8]}); "
            "delete it and retry"
        )
    return digest


def bundled_path(name: str) -> Path:
    path = Path(str(importlib.resources.files("resnest_deploy") / "data" / name))
    if not path.is_file():
        raise WeightsError(f"bundled file {name} is missing from this install; reinstall resnest-deploy")
    return path


def _fetch_official(spec: ModelSpec) -> tuple[Path, str]:
    base = os.environ.get(MIRROR_ENV, OFFICIAL_RELEASES).rstrip("/")
    url = f"{base}/{spec.pretrained.file}"
    return _download(url, checkpoint_dir() / str(spec.pretrained.file)), url


def _fetch_timm(spec: ModelSpec) -> tuple[Path, str]:
    if is_offline():  # huggingface_hub reads this once, at import; without it, importing it already
        os.environ["HF_HUB_OFFLINE"] = "1"  # asks the Hub for its agent registry
    hub = _deps.require("huggingface_hub")
    repo = str(spec.pretrained.hf_hub_id)
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = hub.hf_hub_download(repo, filename, local_files_only=is_offline())
            return Path(path), f"hf-hub:{repo}/{filename}"
        except hub.errors.LocalEntryNotFoundError as e:  # offline or unreachable, and not cached
            raise WeightsError(
                f"cannot get {repo}/{filename}: not in the Hugging Face cache and the Hub is unreachable "
                f"or HF_HUB_OFFLINE is set; run `hf download {repo} {filename}` while online, "
                "or pass {weights=PATH}",
                param="weights",
            ) from e
        except hub.errors.EntryNotFoundError as e:  # the repo lacks this file: try the next format
            errors.append(first_line(e))
        except Exception as e:  # offline, not cached, network down, gated repo
            reason = first_line(e)
            raise WeightsError(
                f"cannot get {repo}/{filename} from the Hugging Face Hub ({reason}); download it "
                f"(`hf download {repo} {filename}`) while online, or pass {{weights=PATH}}",
                param="weights",
            ) from e
    raise WeightsError(
        f"{repo} has no weights file ({'; '.join(errors)}); pass {{weights=PATH}}", param="weights"
    )


def resolve(
    spec: ModelSpec, weights: str | os.PathLike[str] | WeightsInfo | None
) -> tuple[StateDict | None, WeightsInfo]:
    """Turn a ``--weights`` value into tensors and their provenance; ``None`` means random init.

    A :class:`WeightsInfo` (what an artifact records it was made from) is untrusted: its URL is
    used only if already cached, and the checkpoint must have the sha256 it records.
    """
    recorded = weights if isinstance(weights, WeightsInfo) else None
    if recorded is not None:
        if recorded.kind in ("random", "pretrained"):
            weights = recorded.kind
        elif recorded.kind in ("file", "url") and recorded.location and recorded.sha256:
            weights = recorded.location
        else:
            raise WeightsError(
                f"the artifact records weights {recorded.describe()!r} without a checksum; pass {{weights}}",
                param="weights",
            )
    if weights is None or str(weights) == "random":
        return None, WeightsInfo("random")
    w = str(weights)
    if w == "pretrained" and spec.pretrained.bundled:
        path = bundled_path(spec.pretrained.bundled)
        info = WeightsInfo("pretrained", spec.pretrained.url, sha256_file(path))
    elif w == "pretrained":
        path, location = _fetch_official(spec) if spec.pretrained.file else _fetch_timm(spec)
        info = WeightsInfo("pretrained", location, _verify_hash_prefix(path))
    elif urlparse(w).scheme in ("http", "https"):
        path = _download(w, url_cache_path(w), allowed=recorded is None)
        info = WeightsInfo("url", w, _verify_hash_prefix(path))
    elif urlparse(w).scheme:
        raise WeightsError(f"weights URL {w!r} is not http(s); download it and pass the file")
    else:
        path = Path(w).expanduser()
        if not path.is_file():
            return load_checkpoint(path), WeightsInfo("file")  # raises: checkpoint not found
        info = WeightsInfo("file", str(path.resolve()), sha256_file(path))
    if recorded is not None and recorded.sha256 and info.sha256 != recorded.sha256:
        raise WeightsError(
            f"{w} is not the checkpoint the artifact was made from (sha256 {str(info.sha256)[:12]}, "
            f"recorded {str(recorded.sha256)[:12]}); pass {{weights}} with the right one",
            param="weights",
        )
    return load_checkpoint(path), info


def check_fits(model: torch.nn.Module, state_dict: StateDict, arch: str) -> None:
    """Raise with a summary of missing, unexpected and mis-shaped keys before ``load_state_dict``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if items
    ]
    if problems:
        raise WeightsError(f"checkpoint does not fit {arch}: {'; '.join(problems)}; is it for another arch?")
