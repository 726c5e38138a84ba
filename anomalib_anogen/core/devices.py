"""Where the backbone runs and in which precision: the accelerator checks, device planning and the dtype table.

``anogen generate`` (``generate.backends.diffusion.BlendedSampler``) and ``anogen learn``
(``learn.textual_inversion``) both take ``--precision auto | 32 | bf16 | fp16`` and resolve it here, each for its
own use:

* **sampling** (generate): the models *run* in the dtype. ``auto`` is **fp16** on a CUDA GPU, the
  convention of diffusers for Stable Diffusion inference. Not bf16: bf16 keeps 8 significant bits
  (relative rounding up to 2^-8, 0.4%) against fp16's 11 (2^-11), and classifier-free guidance multiplies
  the difference ``cond - uncond`` of two nearly equal predictions by the guidance scale (10) at every
  step: after 50 DDIM steps at guidance 10 on ``sd15-random``, the final latent differs from fp32's by
  1.06% RMS in bf16 and 0.12% in fp16 (``benchmarks/bench_precision.py``, docs/benchmarks.md). The
  scheduler, the guidance sum and the blending stay in fp32 whatever the precision.
* **training** (learn): mixed precision for a loss and its gradient (no guidance; the learned vector stays
  fp32), run by Lightning Fabric's precision plugin (:func:`fabric_precision`: autocast, and for fp16 a
  gradient scaler). ``auto`` is bf16 on a CUDA GPU that has it (bf16's range needs no gradient scaler),
  else fp16.

On any other device (a CPU) every precision resolves to ``32``: half precision there is slow (fp16
convolutions are not vectorised on CPUs) and inexact, and a CPU run is a reference, not a speed run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_anogen.core.checks import at_least, check_choice, check_number
from anomalib_anogen.core.errors import AnogenInputError

if TYPE_CHECKING:  # torch is imported when a precision is resolved, not when an option is checked
    import torch
    from lightning.fabric import Fabric

ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16", "fp16")
# A resolved precision -> the name of its torch dtype.
DTYPES: dict[str, str] = {"32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (``32``, ``bf16`` or ``fp16``)."""
    import torch

    return getattr(torch, DTYPES[precision])


def check_precision(precision: str) -> None:
    """Refuse a ``--precision`` that is none of :data:`PRECISIONS` (an input error, exit code 2)."""
    if precision not in PRECISIONS:
        msg = f"--precision must be one of auto, 32, bf16 or fp16 (got {precision!r})"
        raise AnogenInputError(msg)


def resolve_precision(precision: str, device: torch.device | str, training: bool = False) -> str:
    """``32``, ``bf16`` or ``fp16``: what ``precision`` means on ``device`` (see the module's docstring).

    Args:
        precision: One of :data:`PRECISIONS`.
        device: Where the models run; only a CUDA device ever gets half precision.
        training: For autocast training (learn): ``auto`` is bf16 where the GPU supports it, else fp16.
            Otherwise (sampling, generate): ``auto`` is fp16.
    """
    import torch

    check_precision(precision)
    if torch.device(device).type != "cuda":
        return "32"
    if precision != "auto":
        return precision
    if training:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16"


# A resolved training precision -> Lightning Fabric's name for it (mixed: fp32 weights, autocast compute).
FABRIC_PRECISIONS: dict[str, str] = {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def fabric_precision(precision: str) -> str:
    """Lightning Fabric's ``precision=`` for a resolved training precision (``32``, ``bf16`` or ``fp16``)."""
    return FABRIC_PRECISIONS[precision]


def precision_of(fabric: Fabric) -> str:
    """The resolved training precision (``32``, ``bf16`` or ``fp16``) that ``fabric`` runs."""
    names = {name: precision for precision, name in FABRIC_PRECISIONS.items()}
    return names[str(fabric.strategy.precision.precision)]


def training_fabric(precision: str, device: torch.device | str) -> Fabric:
    """A one-device Fabric running ``precision`` (resolved for ``device`` as for training) on ``device``."""
    import torch
    from lightning.fabric import Fabric

    device = torch.device(device)
    resolved = resolve_precision(precision, device, training=True)
    if device.type == "cuda":
        return Fabric(accelerator="cuda", devices=[device.index or 0], precision=fabric_precision(resolved))
    return Fabric(accelerator="cpu", devices=1, precision=fabric_precision(resolved))


def check_accelerator(accelerator: str) -> None:
    """Refuse an ``--accelerator`` that is none of :data:`ACCELERATORS` (an input error, exit code 2)."""
    check_choice("--accelerator", accelerator, ACCELERATORS)


def wants_cuda(accelerator: str) -> bool:
    """Whether ``--accelerator`` runs on a CUDA GPU here (auto: when one is available)."""
    import torch

    return accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available()


def check_devices(accelerator: str, devices: int | str, num_nodes: int) -> None:
    """Refuse ``--accelerator``/``--devices``/``--num_nodes`` out of range, and several nodes without a launcher.

    Several nodes need one process per node started by a launcher (``torchrun --nnodes N`` or SLURM's
    ``srun``, see docs/generate.md); started on its own, the run would wait for the other nodes forever.
    """
    check_accelerator(accelerator)
    if devices != "auto":
        check_number("--devices", devices, at_least(1), "or auto for every GPU")
    check_number("--num_nodes", num_nodes, at_least(1), "machines, each started by torchrun or SLURM")
    if num_nodes > 1 and not _launched_by_a_cluster():
        msg = (
            f"--num_nodes {num_nodes}: start the command on every node with a launcher "
            f"(torchrun --nnodes {num_nodes} --node_rank R ..., or srun under SLURM); "
            "see docs/generate.md, Several machines"
        )
        raise AnogenInputError(msg)


def _launched_by_a_cluster() -> bool:
    """Whether torchrun, SLURM or LSF started this process (Lightning's cluster environments)."""
    from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

    return any(env.detect() for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment))


def launch_fabric(
    accelerator: str, devices: int | str, units: int, num_nodes: int = 1, precision: str = "32"
) -> Fabric:
    """Lightning Fabric over the planned devices of every node, launched (one process per device).

    Args:
        accelerator: One of :data:`ACCELERATORS`.
        devices: GPUs per node, or ``auto``; see :func:`plan_devices`.
        units: Units of work (defects, chunks): never more devices per node than units.
        num_nodes: Machines; each runs this under a launcher (checked by :func:`check_devices`).
        precision: The training precision (:data:`PRECISIONS`), resolved for the device kind; generation runs
            its models in their own dtype and leaves this at ``32``.
    """
    from lightning.fabric import Fabric

    # Under torchrun or SLURM the processes exist already, one per device: Fabric must see all of them, even
    # when there is less work than devices (those ranks find nothing to do and wait at the barrier).
    kind, count = plan_devices(accelerator, devices, None if _launched_by_a_cluster() else units)
    fabric = Fabric(
        accelerator=kind,
        devices=count,
        num_nodes=num_nodes,
        strategy="ddp" if count * num_nodes > 1 else "auto",
        precision=fabric_precision(resolve_precision(precision, kind, training=True)),
    )
    fabric.launch()
    return fabric


def plan_devices(accelerator: str, devices: int | str, units: int | None) -> tuple[str, int]:
    """Accelerator and device count for Lightning Fabric.

    Several GPUs only when there are several units of work (defect types for learn, chunks for generate);
    ``units`` None: no such cap (a launcher already started one process per device).
    """
    import torch

    if wants_cuda(accelerator):
        available = torch.cuda.device_count()
        wanted = available if devices == "auto" else int(devices)
        return "cuda", max(1, min(wanted, available, units or wanted))
    if accelerator in {"gpu", "cuda"}:
        msg = f"--accelerator {accelerator}: no CUDA device is available"
        raise AnogenInputError(msg)
    return "cpu", 1
