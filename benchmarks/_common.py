"""The harness every benchmark script shares: command line, real data, banks, timing, child processes, report.

Each ``bench_*.py`` measures one thing, prints one table and, with ``--json``, writes the same numbers with the
machine they were measured on, so that docs/benchmarks.md only ever quotes what a script printed. ``--smoke``
runs it at tiny sizes in seconds (``scripts/test.sh``): its numbers mean nothing.

The calls of the package's commands (``generate``, ``learn``, the ``anogen generate`` command line) are all here,
in the bank section, so that a change of their arguments is made once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MVTEC = SHARED / "MVTecAD"  # anomalib MVTecAD layout
CATEGORY = "bottle"  # the real category in ../shared/data
NORMAL = MVTEC / CATEGORY / "train" / "good"
SUPPORT = SHARED / "support" / CATEGORY  # the paper's 3-shot support anomalies with masks
DTD = SHARED / "dtd" / "images"  # Perlin texture source: given to every DRAEM so nothing downloads
DRAEM_WIDTHS = (128, 64)  # DRAEM's reconstructive and discriminative base widths
SMOKE_WIDTHS = {"reconstructive_width": 8, "discriminative_width": 4}  # every DRAEM of a smoke run

# ----------------------------------------------------------------------------------------- command line


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` is the script's docstring, with ``--json`` and ``--smoke``."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--json", type=Path, help="also write the results as JSON here")
    result.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script still works")
    return result


def parse(parser_: argparse.ArgumentParser, argv: list[str] | None, smoke: dict[str, Any]) -> argparse.Namespace:
    """Parse the command line; with ``--smoke`` the options in ``smoke`` take its tiny values."""
    args = parser_.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


def add_widths(parser_: argparse.ArgumentParser, defaults: tuple[int, int] | None = DRAEM_WIDTHS) -> None:
    """``--reconstructive_width`` and ``--discriminative_width`` of every DRAEM of the script."""
    names = ("reconstructive", "discriminative")
    for name, width, default in zip(names, DRAEM_WIDTHS, defaults or (None, None), strict=True):
        parser_.add_argument(f"--{name}_width", type=int, default=default, help=f"DRAEM {name} width (DRAEM: {width})")


def widths(args: argparse.Namespace) -> dict[str, int]:
    """The widths of ``add_widths`` as keyword arguments of ``DraemWeak`` (and ``AnomalibDraem``)."""
    return {"reconstructive_width": args.reconstructive_width, "discriminative_width": args.discriminative_width}


def add_device(parser_: argparse.ArgumentParser) -> None:
    """``--device auto | cpu | cuda``; ``pick_device`` resolves ``auto``."""
    parser_.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")


def pick_device(name: str) -> str:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def quiet(*loggers: str, level: int = logging.WARNING) -> None:
    """No Python warnings (third-party advice on every run), and ``loggers`` only from ``level`` on."""
    warnings.filterwarnings("ignore")
    for name in loggers:
        logging.getLogger(name).setLevel(level)


# ----------------------------------------------------------------------------------------- data


def normal_images(limit: int | None = None) -> list[Path]:
    """The bottle training images (209), sorted by name; the first ``limit`` of them when given."""
    return sorted(NORMAL.glob("*.png"))[:limit]


def link_images(folder: Path, files: list[Path]) -> Path:
    """A new ``folder`` of symlinks to ``files`` (the real data is never copied)."""
    folder.mkdir(parents=True)
    for file in files:
        (folder / file.name).symlink_to(file)
    return folder


# ----------------------------------------------------------------------------------------- banks


def make_bank(output: Path, normal: Path = NORMAL, **options: Any) -> Path:
    """``anogen generate`` (the ``generate`` function) from ``normal`` into ``output``, without a progress bar."""
    from anomalib_anogen.generate.command import generate
    from anomalib_anogen.generate.options import GenerateOptions

    return generate(GenerateOptions(normal=str(normal), output=str(output), progress=False, **options))


def make_paste_bank(output: Path, limit: int, per_image: int = 1, resume: bool = False) -> Path:
    """A bank from the real bottle 3-shot support set with the model-free paste backend.

    ``resume``: generate's own ``--resume``: a finished bank with the same settings is kept, an interrupted one
    completed.
    """
    options = {"per_image": per_image, "samples_per_box": 1, "max_images": limit, "resume": resume}
    return make_bank(output, backend="paste", support=str(SUPPORT), **options)


def learn_embeddings(output: Path, backbone: str, steps: int) -> Path:
    """``anogen learn`` (the ``learn`` function) on the bottle support set, once: an existing folder is kept."""
    from anomalib_anogen.learn.command import learn
    from anomalib_anogen.learn.options import LearnOptions

    if not output.is_dir():
        learn(LearnOptions(support=str(SUPPORT), output=str(output), backbone=backbone, steps=steps, progress=False))
    return output


def generate_command(normal: Path, output: Path, **options: Any) -> list[str]:
    """The ``anogen generate`` command line (one fresh process) with ``--name=value`` for each option.

    It runs the anogen CLI through ``benchmarks/_backbones.py``, which first registers the benchmark-only
    ``sd15-random`` backbone.
    """
    flags = [f"--{name}={value}" for name, value in options.items()]
    cli = str(Path(__file__).with_name("_backbones.py"))
    return [sys.executable, cli, "generate", f"--normal={normal}", f"--output={output}", *flags]


# ----------------------------------------------------------------------------------------- timing


class Stopwatch:
    """``with Stopwatch(device) as watch:``: wall and CPU seconds (this process, all threads) of the block.

    On a CUDA ``device`` the block is bracketed by ``torch.cuda.synchronize``, so queued kernels count.
    """

    def __init__(self, device: str | None = None) -> None:
        self.cuda = bool(device and str(device).startswith("cuda"))
        self.wall = self.cpu = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._started, self._started_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.wall = time.perf_counter() - self._started
        self.cpu = time.process_time() - self._started_cpu


def take_turns(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 0, device: str | None = None
) -> dict[str, list[Stopwatch]]:
    """Time ``calls`` side by side: ``warmup`` untimed rounds, then ``rounds`` in which they take turns (A B A B)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[Stopwatch]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            with Stopwatch(device) as watch:
                call()
            times[name].append(watch)
    return times


def median_seconds(call: Callable[[], object], runs: int, warmup: int = 1, device: str | None = None) -> float:
    """Median wall seconds of ``runs`` calls after ``warmup`` untimed ones."""
    times = take_turns({"call": call}, runs, warmup, device)["call"]
    return statistics.median(watch.wall for watch in times)


# ----------------------------------------------------------------------------------------- child processes


def run_child(command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` to its end, its output captured; a failure ends the benchmark with that output."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        msg = f"failed (exit {done.returncode}): {' '.join(map(str, command))}"
        raise SystemExit(msg)
    return done


# ----------------------------------------------------------------------------------------- report


def machine() -> dict[str, str | int]:
    """Where and when the numbers were measured: CPU model, cores, GPU, library versions, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def print_table(first: str, columns: list[str], rows: dict[str, list[str]], width: int) -> None:
    """A text table: row names left-aligned (as wide as the longest + 2), each cell right-aligned in ``width``."""
    names = max(len(name) for name in rows) + 2
    print(f"{first:<{names}}" + "".join(f"{column:>{width}}" for column in columns))
    for name, cells in rows.items():
        print(f"{name:<{names}}" + "".join(f"{cell:>{width}}" for cell in cells))


def report(results: dict, json_path: Path | None, title: str = "measure", extra: dict | None = None) -> None:
    """Print ``results`` as a two-column table and, when asked, write it as JSON with the machine and ``extra``."""
    width = max([len(title), *(len(str(name)) for name in results)]) + 2
    print(f"{title:<{width}}{'value':>14}")
    for name, value in results.items():
        if isinstance(value, float):
            text = f"{value:>14.3e}" if 0 < abs(value) < 1e-3 else f"{value:>14.4f}"
        else:
            text = f"{value!s:>14}"
        print(f"{name!s:<{width}}{text}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": machine(), "results": results, **(extra or {})}
        json_path.write_text(json.dumps(data, indent=2) + "\n")


def trace_once(model: Any, scratch: Path) -> None:
    """Make ``model.to_onnx`` trace once: a later call with the same arguments gets a copy of the first ONNX file.

    The torch -> ONNX trace is the slow, deterministic first step of every OpenVINO export; what anomalib does
    after it (``ov.convert_model``, FP16 compression, NNCF quantisation) is unchanged.
    """
    original = model.to_onnx
    traced: dict[str, Path] = {}

    def to_onnx(export_root: Path | str, model_file_name: str = "model", input_size: Any = None, **kwargs: Any) -> Path:
        key = repr((model_file_name, input_size, sorted(kwargs.items())))
        if key not in traced:
            path = Path(original(export_root, model_file_name, input_size, **kwargs))
            kept = scratch / f"onnx_{len(traced)}"
            shutil.copytree(path.parent, kept)  # to_openvino traces into a temporary folder
            traced[key] = kept / path.name
            return path
        target = Path(export_root) / "weights" / "onnx"
        shutil.copytree(traced[key].parent, target, dirs_exist_ok=True)
        return target / traced[key].name

    model.to_onnx = to_onnx
