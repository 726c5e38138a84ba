"""Fixtures only: the small data the tests make themselves, threads, signals and the OpenVINO default switch.

Helpers that tests import (paths of the real data, markers, toy inputs, CLI runners, bank factory) live in
``tests/helpers/``.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Lightning and anomalib write next to the working directory unless told otherwise.
os.environ.setdefault("ANOMALIB_LOG_LEVEL", "WARNING")

# Test-only switch: run the suite as if OpenVINO's CPU default precision were this one ("bf16" or "f32"),
# to prove that no test depends on the default of the CPU it runs on (see docs/deploy.md).
OPENVINO_DEFAULT_ENV = "ANOGEN_TEST_OPENVINO_DEFAULT"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (tiny models' ops are too small to gain from threads), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _default_sigchld_disposition() -> Iterator[None]:
    """After each test, SIGCHLD goes back to its default disposition.

    torch installs a Python SIGCHLD handler the first time a DataLoader starts worker processes and keeps it
    for the life of the process. In this long-lived test process a later child's exit then ran that handler
    on a corrupted alternate signal stack and killed pytest with SIGSEGV (si_code SI_KERNEL, in
    ``waitpid``), after the OpenVINO/NNCF tests. Each test's workers are gone when it ends (the generator's
    ``close``), so the handler has nothing left to watch.
    """
    yield
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.fixture(autouse=True, scope="session")
def _openvino_default_precision() -> Iterator[None]:
    """With ``ANOGEN_TEST_OPENVINO_DEFAULT`` set, every ``openvino.Core`` gets that CPU default precision.

    Where the CPU has no bf16, OpenVINO would run a bf16 default as f32, so the switch then rounds every
    model compiled *without* an explicit precision through ``emulate_bf16``: a test that relied on the
    default precision fails here as it would on an AVX-512 BF16 machine.
    """
    forced = os.environ.get(OPENVINO_DEFAULT_ENV)
    if not forced:
        yield
        return
    if forced not in ("bf16", "f32"):
        pytest.exit(f"{OPENVINO_DEFAULT_ENV}={forced!r}: use bf16 or f32", returncode=2)
    import openvino

    from anomalib_anogen.deploy import cpu_info, emulate_bf16

    emulate = forced == "bf16" and not cpu_info().native_bf16

    class ForcedDefaultCore(openvino.Core):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.set_property("CPU", {"INFERENCE_PRECISION_HINT": forced})

        def compile_model(self, model: object, device_name: object = None, config: dict | None = None, **kwargs):
            if emulate and "INFERENCE_PRECISION_HINT" not in (config or {}):
                model = emulate_bf16(model if isinstance(model, openvino.Model) else self.read_model(model))
            return super().compile_model(model, device_name, config, **kwargs)

    original = openvino.Core
    openvino.Core = ForcedDefaultCore
    try:
        yield
    finally:
        openvino.Core = original


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVTec-layout category ``toy_bottle`` (48 px) under the returned root."""
    from anomalib_anogen.data.toy import make_toy_category

    root = tmp_path_factory.mktemp("toy_mvtec")
    make_toy_category(root, size=48, n_train=8, n_test_good=3, n_test_per_defect=2)
    return root


@pytest.fixture(scope="session")
def toy_inputs(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> dict[str, str]:
    """The toy category as ``anogen generate``'s inputs: normal folder, support set and box priors (read only)."""
    from .helpers.data import toy_inputs

    return toy_inputs(toy_root, tmp_path_factory.mktemp("toy_inputs"))
