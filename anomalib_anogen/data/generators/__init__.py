"""Synthetic-anomaly generators by name: ``perlin`` (anomalib's Perlin/DTD) and ``anogen`` (bank + Perlin).

The weakly-supervised models build their generator through ``build_generator`` from a name
or a ``class_path`` dict, so a config can switch between them with one line.
"""

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from anomalib_anogen.data.synthetic import SyntheticBatch

from .anogen import AnoGenAnomalyGenerator, BankDataset
from .perlin import PerlinGenerator

GENERATORS: dict[str, type[nn.Module]] = {"perlin": PerlinGenerator, "anogen": AnoGenAnomalyGenerator}


def build_generator(spec: str | dict[str, Any], **options: Any) -> nn.Module:
    """Instantiate a generator.

    Args:
        spec: A registered name (``perlin``, ``anogen``), or ``{"class_path": ..., "init_args": {...}}``.
        options: The model's generator settings; for a name, those the class accepts are passed on (a
            ``bank_dir`` for a generator that reads no bank is an error). A ``class_path`` dict takes only its
            own ``init_args``.
    """
    if isinstance(spec, dict):
        if "class_path" not in spec:
            msg = f"generator: a dict needs 'class_path' (and optionally 'init_args'), got {spec!r}."
            raise ValueError(msg)
        module_name, _, class_name = str(spec["class_path"]).rpartition(".")
        if module_name:
            cls = getattr(importlib.import_module(module_name), class_name)
        else:
            cls = {registered.__name__: registered for registered in GENERATORS.values()}.get(class_name)
        if cls is None:
            msg = f"generator: unknown class_path {spec['class_path']!r}; give a full module path."
            raise ValueError(msg)
        return cls(**dict(spec.get("init_args") or {}))
    if spec not in GENERATORS:
        msg = f"generator must be one of {sorted(GENERATORS)} or a class_path dict, got {spec!r}."
        raise ValueError(msg)
    if spec != "anogen" and options.get("bank_dir") is not None:
        msg = f"bank_dir is set but generator is {spec!r}, which does not read banks; set generator: anogen."
        raise ValueError(msg)
    if spec == "anogen" and options.get("bank_dir") is None:
        msg = (
            "generator 'anogen' needs bank_dir: the folder made by `anogen generate ... --output <bank>` "
            "(see docs/generate.md)."
        )
        raise ValueError(msg)
    cls = GENERATORS[spec]
    accepted = inspect.signature(cls).parameters
    return cls(**{name: value for name, value in options.items() if name in accepted})


def generate_batch(generator: nn.Module, images: torch.Tensor) -> SyntheticBatch:
    """Synthetic anomalies for a batch, from any generator.

    Generators of this package return mask kinds and reconstruction targets (``generate``); a plain
    ``PerlinAnomalyGenerator``-like module given by ``class_path`` gives exact masks and keeps the batch
    image as the target.
    """
    if hasattr(generator, "generate"):
        return generator.generate(images)
    augmented, mask = generator(images)
    is_box = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    return SyntheticBatch(image=augmented, mask=mask, is_box=is_box, target=images)


__all__ = [
    "GENERATORS",
    "AnoGenAnomalyGenerator",
    "BankDataset",
    "PerlinGenerator",
    "build_generator",
    "generate_batch",
]
