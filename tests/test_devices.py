"""``--precision``: one resolution for generate (sampling) and learn (training), checked without a GPU.

``torch.cuda.is_bf16_supported`` is mocked, and a CUDA *device object* needs no GPU, so every branch runs on
any machine.
"""

from pathlib import Path

import pytest
import torch

from anomalib_anogen.core import devices
from anomalib_anogen.core.devices import (
    PRECISIONS,
    check_precision,
    dtype_of,
    fabric_precision,
    precision_of,
    resolve_precision,
    training_fabric,
)
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.generate.backends import diffusion
from anomalib_anogen.learn import textual_inversion

PACKAGE = Path(devices.__file__).resolve().parents[1]


@pytest.fixture(params=[True, False], ids=["gpu-with-bf16", "gpu-without-bf16"])
def bf16_support(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: request.param)
    return request.param


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "meta"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("training", [False, True])
def test_anything_but_cuda_runs_in_fp32(device: object, precision: str, training: bool) -> None:
    assert resolve_precision(precision, device, training=training) == "32"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_sampling_auto_is_fp16_on_any_gpu(device: object, bf16_support: bool) -> None:
    assert resolve_precision("auto", device) == "fp16"


def test_training_auto_is_bf16_where_the_gpu_has_it_else_fp16(bf16_support: bool) -> None:
    assert resolve_precision("auto", "cuda", training=True) == ("bf16" if bf16_support else "fp16")


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
@pytest.mark.parametrize("training", [False, True])
def test_an_explicit_precision_is_kept_on_a_gpu(precision: str, training: bool, bf16_support: bool) -> None:
    assert resolve_precision(precision, "cuda", training=training) == precision


@pytest.mark.parametrize("precision", ["16", "fp32", "half", "AUTO", ""])
def test_an_unknown_precision_is_an_input_error(precision: str) -> None:
    with pytest.raises(AnogenInputError, match=r"--precision must be one of auto, 32, bf16 or fp16 \(got "):
        check_precision(precision)
    with pytest.raises(AnogenInputError, match="--precision"):
        resolve_precision(precision, "cpu")


def test_dtypes() -> None:
    assert [dtype_of(p) for p in ("32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert [fabric_precision(p) for p in ("32", "bf16", "fp16")] == ["32-true", "bf16-mixed", "16-mixed"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_training_fabric_on_a_cpu_runs_fp32_whatever_is_asked(precision: str) -> None:
    fabric = training_fabric(precision, "cpu")
    assert fabric.device == torch.device("cpu")
    assert precision_of(fabric) == "32"


def test_the_resolution_lives_in_one_place() -> None:
    """The sampler and learn use devices' functions; no other module decides on bf16 or builds a scaler."""
    assert diffusion.resolve_precision is devices.resolve_precision
    assert textual_inversion.training_fabric is devices.training_fabric
    elsewhere = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "devices.py" and "is_bf16_supported" in path.read_text()
    ]
    assert elsewhere == []
    hand_written = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "GradScaler" in path.read_text() or "torch.autocast" in path.read_text()
    ]
    assert hand_written == [], "mixed precision is Lightning Fabric's (devices.training_fabric)"


def test_the_sampler_on_a_cpu_runs_fp32_whatever_is_asked() -> None:
    from anomalib_anogen.core.backbones import build_tiny

    backbone = build_tiny(0)
    for precision in PRECISIONS:
        sampler = diffusion.BlendedSampler(backbone, steps=2, guidance=2.0, precision=precision)
        assert (sampler.precision, sampler.dtype) == ("32", torch.float32)
    assert next(backbone.unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
@pytest.mark.parametrize("devices_option", ["auto", 1, 3])
def test_plan_devices_uses_at_most_the_gpus_there_are_and_the_work_there_is(
    monkeypatch: pytest.MonkeyPatch, gpus: int, devices_option: int | str
) -> None:
    from anomalib_anogen.core.devices import plan_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for units in (1, 2, 5):
        kind, count = plan_devices("auto", devices_option, units)
        if gpus == 0:
            assert (kind, count) == ("cpu", 1)
        else:
            wanted = gpus if devices_option == "auto" else devices_option
            assert kind == "cuda" and count == max(1, min(wanted, gpus, units))
    assert plan_devices("cpu", devices_option, 5) == ("cpu", 1)
    if gpus:  # under a launcher (units None) the processes it started decide, not the work
        wanted = gpus if devices_option == "auto" else devices_option
        assert plan_devices("auto", devices_option, None) == ("cuda", min(wanted, gpus))
    if gpus == 0:
        with pytest.raises(AnogenInputError, match="--accelerator gpu: no CUDA device"):
            plan_devices("gpu", devices_option, 5)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_chunk_goes_to_exactly_one_rank(world: int) -> None:
    from anomalib_anogen.generate.work import NormalImage, chunks_for_rank, chunks_of, work_list

    normals = [NormalImage(i, Path(f"{i:03d}.png"), "0" * 64, (8, 8)) for i in range(5)]
    chunks = chunks_of(work_list(normals, ["crack", "stain"], 4, 2), 3)
    mine = [chunks_for_rank(chunks, rank, world) for rank in range(world)]
    ids = [item.record_id for rank in mine for chunk in rank for item in chunk]
    assert sorted(ids) == sorted(item.record_id for chunk in chunks for item in chunk)
    assert len(ids) == len(set(ids)) == 5 * 2 * 4
