"""Class names: ImageNet-1k's from ``imagenet_classes.txt`` beside this module, digits' and
fine-tuned heads' as indices. One place for predictions, ``eval``'s synset folders, Triton's label
file and DeepStream's labels."""

from __future__ import annotations

import functools
import importlib.resources


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(synset id, name) for the 1,000 ImageNet-1k classes in index order."""
    text = (importlib.resources.files("resnest_deploy") / "data" / "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((synset, names.split(",")[0]) for synset, names in rows)


def class_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-class head, else the class indices as text."""
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [str(i) for i in range(num_classes)]
