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

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_anogen.core.files import sha256_file, write_fault
from anomalib_anogen.core.threads import SMALL_BACKBONES, thread_count, torch_threads
from anomalib_anogen.generate.bank_writer import LOCK_NAME, BankLock, check_bank_output, check_target
from anomalib_anogen.generate.capacity import check_disk
from anomalib_anogen.generate.foreground import resolve_rule
from anomalib_anogen.generate.inputs import Inputs, check_records, read_inputs
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.run import Job, is_first_process, run
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import work_list

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
    with ExitStack() as held:
        if first:
            _take_lock(held, output)
        inputs = read_inputs(options)
        settings = bank_settings(options, inputs)
        # Workers never prepare the bank.
        mode = check_bank_output(output, settings.to_json(), options.resume, options.overwrite) if first else "worker"
        if first:  # a bank that cannot fit the disk is refused before it is touched
            records = check_records(len(inputs.normals), len(inputs.defects), options.per_image)
            check_disk(output, inputs.normals, inputs.resolution, records, mode)
        job = Job(
            settings=settings,
            items=work_list(inputs.normals, inputs.defects, options.per_image, options.samples_per_box),
            priors=inputs.priors.table,
            placement=inputs.placement,
            output=output,
            mode=mode,
            maker=lambda device: _maker(inputs, settings, device),
        )
        small = inputs.model is None or inputs.model.spec in SMALL_BACKBONES  # paste, or a toy backbone
        with torch_threads(thread_count(options.threads, small)):
            return run(job, options)


def _take_lock(held: ExitStack, output: Path) -> None:
    """Hold the bank's lock in ``held``; a disk that cannot take the lock file's one line is a machine fault."""
    try:
        held.enter_context(BankLock(output))
    except OSError as error:  # the lock removed its file and the folders it created
        raise write_fault(output / LOCK_NAME, "the lock file", error, "run the same command again") from error


def bank_settings(options: GenerateOptions, inputs: Inputs) -> GenerateSettings:
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
    }
    model, sources = inputs.model, inputs.sources
    if model is None:
        support = {
            name: [[sha256_file(c.source.pair.image), sha256_file(c.source.pair.mask)] for c in sources.cutouts[name]]
            for name in inputs.defects
        }
        return GenerateSettings(**common, support=support, blend=options.blend)
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
