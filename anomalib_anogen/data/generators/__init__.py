"""Synthetic-anomaly generators by name: ``perlin`` (anomalib's Perlin/DTD) and ``anogen`` (bank + Perlin).

The weakly-supervised models check their generator choice with ``resolve_generator`` when they are
built (no file is read) and build it when training starts, from a name or a ``class_path`` dict, so a
config can switch between them with one line and a trained model never needs its training data.
"""

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anomalib_anogen.arguments import ModelArgumentError
from anomalib_anogen.data.synthetic import SyntheticBatch

from .anogen import AnoGenAnomalyGenerator, BankDataset
from .perlin import PerlinGenerator
from .rotation import DESTSEG_CATEGORIES, ROTATION_RULES, Rotation, destseg_rotation, resolve_rotation_rule

GENERATORS: dict[str, type[nn.Module]] = {"perlin": PerlinGenerator, "anogen": AnoGenAnomalyGenerator}


@dataclass(frozen=True)
class GeneratorSpec:
    """A checked generator choice, not built yet: building reads the bank and the DTD folder."""

    cls: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def with_options(self, **options: Any) -> "GeneratorSpec":
        """The same choice with ``options`` set, where the class takes them (others are left out)."""
        accepted = inspect.signature(self.cls).parameters
        return GeneratorSpec(self.cls, {**self.kwargs, **{k: v for k, v in options.items() if k in accepted}})

    def build(self) -> nn.Module:
        """Instantiate the generator (reads its files; raises naming the argument when they are missing)."""
        return self.cls(**self.kwargs)


def resolve_generator(spec: str | dict[str, Any], **options: Any) -> GeneratorSpec:
    """Check a generator choice without touching any file.

    Args:
        spec: A registered name (``perlin``, ``anogen``), or ``{"class_path": ..., "init_args": {...}}``.
        options: The model's generator settings; for a name, those the class accepts are passed on (a
            ``bank_dir`` for a generator that reads no bank is an error). A ``class_path`` dict takes only its
            own ``init_args``, which must fit the class's signature.

    Raises:
        ModelArgumentError: Unknown name or class, ``bank_dir`` without ``generator: anogen`` or the other way
            round, ``init_args`` the class does not take.
    """
    if isinstance(spec, dict):
        if "class_path" not in spec:
            msg = f"generator: a dict needs 'class_path' (and optionally 'init_args'), got {spec!r}."
            raise ModelArgumentError(msg)
        module_name, _, class_name = str(spec["class_path"]).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
        except (ImportError, AttributeError) as error:
            msg = f"generator: cannot import class_path {spec['class_path']!r} ({error})."
            raise ModelArgumentError(msg) from error
        if cls is None:
            cls = {registered.__name__: registered for registered in GENERATORS.values()}.get(class_name)
        if cls is None:
            msg = f"generator: unknown class_path {spec['class_path']!r}; give a full module path."
            raise ModelArgumentError(msg)
        init_args = dict(spec.get("init_args") or {})
        try:
            inspect.signature(cls).bind(**init_args)
        except TypeError as error:
            msg = f"generator: init_args {sorted(init_args)} do not fit {cls.__name__}: {error}."
            raise ModelArgumentError(msg) from error
        return _checked(GeneratorSpec(cls, init_args))
    if spec not in GENERATORS:
        msg = f"generator must be one of {sorted(GENERATORS)} or a class_path dict, got {spec!r}."
        raise ModelArgumentError(msg)
    if spec != "anogen" and options.get("bank_dir") is not None:
        msg = f"bank_dir is set but generator is {spec!r}, which does not read banks; set generator: anogen."
        raise ModelArgumentError(msg)
    if spec == "anogen" and options.get("bank_dir") is None:
        msg = (
            "generator 'anogen' needs bank_dir: the folder made by `anogen generate ... --output <bank>` "
            "(see docs/generate.md)."
        )
        raise ModelArgumentError(msg)
    # Every generator setting a model has is checked, also those the chosen generator does not read (a
    # bank_probability of -0.1 is wrong whatever the generator): the anogen generator's check covers them all.
    AnoGenAnomalyGenerator.check_arguments(**options)
    cls = GENERATORS[spec]
    accepted = inspect.signature(cls).parameters
    return GeneratorSpec(cls, {name: value for name, value in options.items() if name in accepted})


def _checked(spec: GeneratorSpec) -> GeneratorSpec:
    """The spec, once its class has checked the numbers (this package's generators do, without reading files)."""
    check = getattr(spec.cls, "check_arguments", None)
    if check is not None:
        check(**spec.kwargs)
    return spec


def build_generator(spec: str | dict[str, Any], **options: Any) -> nn.Module:
    """Check a generator choice (see ``resolve_generator``) and instantiate it."""
    return resolve_generator(spec, **options).build()


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
    "DESTSEG_CATEGORIES",
    "GENERATORS",
    "ROTATION_RULES",
    "AnoGenAnomalyGenerator",
    "BankDataset",
    "GeneratorSpec",
    "PerlinGenerator",
    "Rotation",
    "build_generator",
    "destseg_rotation",
    "generate_batch",
    "resolve_generator",
    "resolve_rotation_rule",
]
