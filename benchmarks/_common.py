"""What every benchmark script shares: paths, the real-data bank, the machine description and the report.

Each ``bench_*.py`` prints one table and, with ``--json``, writes the same numbers with the machine
they were measured on, so that docs/benchmarks.md only ever quotes what a script printed.
"""

import argparse
import datetime
import json
import platform
from pathlib import Path

from anomalib_anogen.generate.options import GenerateOptions

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MVTEC = SHARED / "MVTecAD"  # anomalib MVTecAD layout
CATEGORY = "bottle"  # the real category in ../shared/data
NORMAL = MVTEC / CATEGORY / "train" / "good"
SUPPORT = SHARED / "support" / CATEGORY  # the paper's 3-shot support anomalies with masks
DTD = SHARED / "dtd" / "images"  # Perlin texture source: given to every DRAEM so nothing downloads


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` is the script's docstring, with ``--json`` and ``--smoke``."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--json", type=Path, help="also write the results as JSON here")
    result.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script still works")
    return result


def make_paste_bank(output: Path, limit: int, per_image: int = 1, resume: bool = False) -> Path:
    """A bank from the real bottle 3-shot support set with the model-free paste backend (``anogen generate``).

    ``resume``: generate's own ``--resume``: a finished bank with the same settings is kept, an interrupted one
    completed.
    """
    from anomalib_anogen.generate.command import generate

    return generate(
        GenerateOptions(
            normal=str(NORMAL),
            output=str(output),
            backend="paste",
            support=str(SUPPORT),
            per_image=per_image,
            samples_per_box=1,
            max_images=limit,
            resume=resume,
            progress=False,
        )
    )


def machine() -> dict[str, str | int]:
    """Where and when the numbers were measured: CPU model, cores, GPU, library versions, date."""
    import os

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


def report(results: dict, json_path: Path | None, title: str = "measure") -> None:
    """Print ``results`` as a two-column table and, when asked, write it with the machine as JSON."""
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
        json_path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
