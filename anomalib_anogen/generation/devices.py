"""Where the backbone runs and in which precision: the accelerator checks, device planning and the dtype table.

``anogen generate`` (``sampling.BlendedSampler``) and ``anogen learn`` (``textual_inversion``) both take
``--precision auto | 32 | bf16 | fp16`` and resolve it here, each for its own use:

* **sampling** (generate): the models *run* in the dtype. ``auto`` is **fp16** on a CUDA GPU, the
  convention of diffusers for Stable Diffusion inference. Not bf16: bf16 keeps 8 significant bits
  (relative rounding up to 2^-8, 0.4%) against fp16's 11 (2^-11), and classifier-free guidance multiplies
  the difference ``cond - uncond`` of two nearly equal predictions by the guidance scale (10) at every
  step: after 50 DDIM steps at guidance 10 on ``sd15-random``, the final latent differs from fp32's by
  1.06% RMS in bf16 and 0.12% in fp16 (``benchmarks/bench_precision.py``, docs/benchmarks.md). The
  scheduler, the guidance sum and the blending stay in fp32 whatever the precision.
* **training** (learn): autocast for a loss and its gradient (no guidance; the learned vector stays fp32).
  ``auto`` is bf16 on a CUDA GPU that has it (bf16's range needs no gradient scaler), else fp16 with
  a gradient scaler.

On any other device (a CPU) every precision resolves to ``32``: half precision there is slow (fp16
convolutions are not vectorised on CPUs) and inexact, and a CPU run is a reference, not a speed run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_anogen.generation.errors import AnogenInputError

if TYPE_CHECKING:  # torch is imported when a precision is resolved, not when an option is checked
    import torch

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
        raise AnogenInputError(f"--precision must be one of auto, 32, bf16 or fp16 (got {precision!r})")


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


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision, or None for ``32`` (autocast off)."""
    return None if precision == "32" else dtype_of(precision)


def check_accelerator(accelerator: str) -> None:
    """Refuse an ``--accelerator`` that is none of :data:`ACCELERATORS` (an input error, exit code 2)."""
    if accelerator not in ACCELERATORS:
        raise AnogenInputError(f"--accelerator must be one of {', '.join(ACCELERATORS)} (got {accelerator!r})")


def wants_cuda(accelerator: str) -> bool:
    """Whether ``--accelerator`` runs on a CUDA GPU here (auto: when one is available)."""
    import torch

    return accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available()


def plan_devices(accelerator: str, devices: int | str, units: int) -> tuple[str, int]:
    """Accelerator and device count for Lightning Fabric.

    Several GPUs only when there are several units of work (defect types for learn, chunks for generate).
    """
    import torch

    if wants_cuda(accelerator):
        available = torch.cuda.device_count()
        wanted = available if devices == "auto" else int(devices)
        return "cuda", max(1, min(wanted, available, units))
    if accelerator in {"gpu", "cuda"}:
        raise AnogenInputError(f"--accelerator {accelerator}: no CUDA device is available")
    return "cpu", 1
