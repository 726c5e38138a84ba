"""Start-up cost of the plugin's import hook: ``python -c pass`` with and without it, side by side.

The plugin installs ``anomalib_anogen_autoload.pth``, which every Python process of the
environment runs at start. This script makes two scratch virtual environments from the same
interpreter, one bare and one holding only the hook (the .pth plus the two small modules it
imports), runs ``python -c pass`` in them alternately, and prints the medians and their
difference. Target: under 20 ms (docs/plugin.md).

    python benchmarks/bench_startup.py [--runs 40] [--json out.json] [--smoke]
"""

import shutil
import statistics
import sys
import sysconfig
import tempfile
from pathlib import Path

from _common import REPO, parse, parser, report, run_child, take_turns

TARGET_MS = 20.0


def make_venv(folder: Path, with_hook: bool) -> Path:
    """Create a pip-less venv; with ``with_hook`` copy the plugin's start-up files into it."""
    run_child([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    purelib = run_child([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    if with_hook:
        site = Path(purelib.strip())
        shutil.copy(REPO / "anomalib_anogen_autoload.pth", site)
        (site / "anomalib_anogen").mkdir()
        for name in ("__init__.py", "_autoload.py"):
            shutil.copy(REPO / "anomalib_anogen" / name, site / "anomalib_anogen" / name)
    return python


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--runs", type=int, default=40, help="runs per environment (alternating)")
    args = parse(parser_, argv, smoke={"runs": 3})

    with tempfile.TemporaryDirectory() as scratch:
        pythons = {
            "without plugin": make_venv(Path(scratch) / "bare", with_hook=False),
            "with plugin": make_venv(Path(scratch) / "hooked", with_hook=True),
        }
        check = "import sys; assert any(type(f).__name__ == 'AnomalibCliFinder' for f in sys.meta_path)"
        run_child([str(pythons["with plugin"]), "-c", check])
        calls = {
            name: (lambda python=python: run_child([str(python), "-c", "pass"])) for name, python in pythons.items()
        }
        times = take_turns(calls, args.runs, warmup=1)  # the warm-up call warms the file cache

    median = {name: 1000 * statistics.median(watch.wall for watch in values) for name, values in times.items()}
    overhead = median["with plugin"] - median["without plugin"]
    results = {
        "python": sys.version.split()[0],
        "platform": sysconfig.get_platform(),
        "runs": args.runs,
        "median_ms_without_plugin": median["without plugin"],
        "median_ms_with_plugin": median["with plugin"],
        "overhead_ms": overhead,
        "ratio": median["with plugin"] / median["without plugin"],
        "target": f"overhead < {TARGET_MS:g} ms: {'met' if overhead < TARGET_MS else 'MISSED'}",
    }
    report(results, args.json, title="python -c pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
