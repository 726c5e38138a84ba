"""``anogen generate``: put defects into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

The work list is every normal image x every defect type x ``per_image`` records (``samples_per_box`` samples
per box), in that order, cut into fixed chunks of ``batch_size``. A chunk is one sampler call, so its
composition never depends on what was already done: a resumed run, a single device and several devices
(Lightning Fabric, ``chunks[rank::world_size]``) all compute each record in the same batch and write the same
bytes. Every record's box and noise come from seeds derived from (``seed``, its id), never from a shared RNG.

The options are checked before anything is written; then the bank's lock is taken (one writer per bank, see
:class:`~anomalib_anogen.generate.bank_writer.BankLock`) and the inputs are read and checked before the bank is
touched; see docs/generate.md.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.core.threads import SMALL_BACKBONES, thread_count, torch_threads
from anomalib_anogen.generate.bank_writer import BankLock, check_bank_output, check_target
from anomalib_anogen.generate.foreground import resolve_rule
from anomalib_anogen.generate.inputs import Inputs, read_inputs
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.quality import QualityGate, fixed_reference, references_from_pairs
from anomalib_anogen.generate.run import Job, is_first_process, run
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import work_list

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from anomalib_anogen.generate.backends import Maker


def generate(options: GenerateOptions) -> Path:
    """Generate anomalies into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

    The options are checked when they are built; see :class:`~anomalib_anogen.generate.options.GenerateOptions`.
    Returns the bank folder.
    """
    output = options.output_path
    first = is_first_process()
    if first:  # refuse a file or a stranger's folder before the lock file goes there
        check_target(output, options.resume, options.overwrite)
    # One writer per bank: the lock is taken before any work and released however the run ends (see BankLock).
    with BankLock(output) if first else nullcontext():
        inputs = read_inputs(options)
        gate, gate_record = quality_gate(options, inputs)
        settings = bank_settings(options, inputs, gate_record)
        # Workers never prepare the bank.
        mode = check_bank_output(output, settings.to_json(), options.resume, options.overwrite) if first else "worker"
        job = Job(
            settings=settings,
            items=work_list(inputs.normals, inputs.defects, options.per_image, options.samples_per_box),
            priors=inputs.priors.table,
            placement=inputs.placement,
            output=output,
            mode=mode,
            maker=lambda device: _maker(inputs, settings, device),
            gate=gate,
        )
        small = inputs.model is None or inputs.model.spec in SMALL_BACKBONES  # paste, or a toy backbone
        with torch_threads(thread_count(options.threads, small)):
            return run(job, options)


def quality_gate(options: GenerateOptions, inputs: Inputs) -> tuple[QualityGate, dict[str, Any] | None]:
    """The run's quality gate, and what ``settings.quality`` records of it (``None`` for the default gate).

    The references come from the support anomalies: the paste backend's own, or (diffusion) those of ``--support``
    when it is given, for the defect types it has; otherwise a fixed reference (logged). The default gate of a
    paste bank is fully defined by its support set, which the settings hold already, so it adds nothing to them
    (banks made before the gate keep their settings and resume); overrides, ``--gate false`` and the support set
    of a diffusion bank are recorded.
    """
    from anomalib_anogen.data.support import discover_support, load_support

    foreground = resolve_rule(options.foreground, inputs.priors.category)
    recorded: dict[str, Any] = {} if options.gate else {"gate": False}
    for name in ("min_visibility", "min_on_object", "max_leak"):
        if getattr(options, name) is not None:
            recorded[name] = getattr(options, name)
    if inputs.model is None:
        pairs = {name: [c.source for c in inputs.sources.cutouts[name]] for name in inputs.defects}
    elif options.support is not None:
        found = discover_support(options.support)
        found.pairs = {name: found.pairs[name] for name in found.defects if name in inputs.defects}
        pairs = load_support(found)
        recorded["support"] = {
            name: [[sha256_file(p.pair.image), sha256_file(p.pair.mask)] for p in loaded]
            for name, loaded in sorted(pairs.items())
        }
    else:
        pairs = {}
    references = references_from_pairs(pairs, inputs.resolution, foreground)
    missing = [name for name in inputs.defects if name not in references]
    if missing:
        logger.warning(
            "quality: no support anomalies of %s (pass --support, the folder given to `anogen learn`): their "
            "visibility is measured against a fixed reference (ΔE %.0f) and the gate uses fixed limits "
            "(docs/quality.md)",
            ", ".join(missing),
            fixed_reference().contrast,
        )
        references.update({name: fixed_reference() for name in missing})
    gate = QualityGate(references, options.gate, options.min_visibility, options.min_on_object, options.max_leak)
    for name in inputs.defects:
        limits = gate.limits(name)
        logger.info(
            "quality gate%s: %s: min_visibility %.3f (%s), min_on_object %.3f (%s), max_leak %.3f (%s)",
            "" if options.gate else " (off: measure only)",
            name,
            limits.min_visibility,
            limits.origin["min_visibility"],
            limits.min_on_object,
            limits.origin["min_on_object"],
            limits.max_leak,
            limits.origin["max_leak"],
        )
    return gate, recorded or None


def bank_settings(options: GenerateOptions, inputs: Inputs, quality: dict[str, Any] | None = None) -> GenerateSettings:
    """What defines the bank's content (recorded in bank.json; ``--resume`` requires the same)."""
    common: dict[str, Any] = {
        "backend": options.backend,
        "normal": str(inputs.normal_root),
        "sources": len(inputs.normals),
        "sources_sha256": [n.sha256 for n in inputs.normals],
        "defects": inputs.defects,
        "priors": {name: inputs.priors.table[name].describe() for name in inputs.defects},
        "foreground": resolve_rule(options.foreground, inputs.priors.category),
        "min_foreground": options.min_foreground,
        "max_tries": options.max_tries,
        "per_image": options.per_image,
        "samples_per_box": options.samples_per_box,
        "resolution": inputs.resolution,
        "seed": options.seed,
        "keep_outside": options.keep_outside,
        "feather": options.feather_pixels(inputs.resolution),
        "priors_auto": inputs.priors.derived,
        "placement": inputs.placement.describe() if inputs.placement is not None else None,
        "quality": quality,
    }
    model, sources = inputs.model, inputs.sources
    if model is None:
        support = {
            name: [[sha256_file(c.source.pair.image), sha256_file(c.source.pair.mask)] for c in sources.cutouts[name]]
            for name in inputs.defects
        }
        from anomalib_anogen.generate.backends.paste import PASTE_VERSION

        return GenerateSettings(**common, support=support, blend=options.blend, paste_version=PASTE_VERSION)
    import torch

    from anomalib_anogen.core.devices import resolve_precision, wants_cuda

    device = torch.device("cuda" if wants_cuda(options.accelerator) else "cpu")
    return GenerateSettings(
        **common,
        backbone=model.spec,
        backbone_sha256=model.fingerprint(),
        embeddings={name: sha256_file(sources.embeddings[name].path) for name in inputs.defects},
        steps=options.steps,
        guidance=options.guidance,
        eta=0.0,
        batch_size=options.batch_size,
        precision=resolve_precision(options.precision, device),
    )


def _maker(inputs: Inputs, settings: GenerateSettings, device: torch.device) -> Maker:
    """The run's backend, built on the device of the rank that runs it."""
    if inputs.model is None:
        from anomalib_anogen.generate.backends.paste import PasteMaker

        return PasteMaker(inputs.sources.cutouts, settings)
    from anomalib_anogen.generate.backends.diffusion import DiffusionMaker

    return DiffusionMaker(inputs.model, inputs.sources.embeddings, settings, device)
