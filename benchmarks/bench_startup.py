"""Start-up cost of the plugin's import hook: ``python -c pass`` with and without it, side by side.

The plugin installs ``anomalib_anogen_autoload.pth``, which every Python process of the
environment runs at start. This script makes two scratch virtual environments from the same
interpreter, one bare and one holding only the hook (the .pth plus the two small modules it
imports), runs ``python -c pass`` in them alternately, and prints the medians and their
difference. Target: under 20 ms (docs/plugin.md).

    python benchmarks/bench_startup.py [--runs 40] [--json out.json] [--smoke]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 20.0


def make_venv(folder: Path, with_hook: bool) -> Path:
    """Create a pip-less venv; with ``with_hook`` copy the plugin's start-up files into it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if with_hook:
        site = Path(purelib)
        shutil.copy(REPO / "anomalib_anogen_autoload.pth", site)
        (site / "anomalib_anogen").mkdir()
        for name in ("__init__.py", "_autoload.py"):
            shutil.copy(REPO / "anomalib_anogen" / name, site / "anomalib_anogen" / name)
    return python


def time_once(python: Path) -> float:
    """Wall time of one ``python -c pass`` in milliseconds."""
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="runs per environment (alternating)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--smoke", action="store_true", help="3 runs, to check the script works")
    args = parser.parse_args(argv)
    runs = 3 if args.smoke else args.runs

    with tempfile.TemporaryDirectory() as scratch:
        bare = make_venv(Path(scratch) / "bare", with_hook=False)
        hooked = make_venv(Path(scratch) / "hooked", with_hook=True)
        check = "import sys; assert any(type(f).__name__ == 'AnomalibCliFinder' for f in sys.meta_path)"
        subprocess.run([str(hooked), "-c", check], check=True)
        for python in (bare, hooked):  # warm the file cache
            time_once(python)
        samples: dict[str, list[float]] = {"without plugin": [], "with plugin": []}
        for _ in range(runs):
            samples["without plugin"].append(time_once(bare))
            samples["with plugin"].append(time_once(hooked))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    overhead = medians["with plugin"] - medians["without plugin"]
    result = {
        "python": sys.version.split()[0],
        "platform": sysconfig.get_platform(),
        "runs": runs,
        "median_ms": medians,
        "overhead_ms": overhead,
        "ratio": medians["with plugin"] / medians["without plugin"],
        "target_ms": TARGET_MS,
        "meets_target": overhead < TARGET_MS,
    }
    print(f"{'python -c pass':<20}{'median ms':>12}")
    for name, value in medians.items():
        print(f"{name:<20}{value:>12.2f}")
    print(f"{'overhead':<20}{overhead:>12.2f}   (ratio {result['ratio']:.3f}, target < {TARGET_MS:.0f} ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
