"""Images/s and peak memory of ``anogen generate --backend paste`` with its bank written serially or by writer threads.

The same work is done at two image sizes, side by side in one run, each with every ``--writers`` value (default
0 = serial, PNG encoding and sha256 in the generation loop, and 2 = a pool of two writer threads):

1. ``256px``: the first ``--images`` real bottle normal images (../shared/data/MVTecAD/bottle/train/good), as they
   are (256 x 256);
2. ``--large`` (default ``2448x2048``, a 5-megapixel line-camera frame): the same images upscaled (bicubic) to that
   size in a scratch folder (never kept). ``anogen generate`` makes a square bank at ``--resolution``, which for
   the paste backend defaults to the first image's width, so these are stretched to 2448 x 2448, as a user
   who leaves ``--resolution`` out would get (docs/generate.md, "Large images").

Every defect type of the bottle support set (the paper's 3-shot anomalies) with the paper's bottle box priors,
``--per_image`` records each. Each run
is one child process forked from this one after the imports (so no run pays them, and none shares the others'
memory): images/s is that of generate's own loop (making, encoding, hashing and writing every record; the value
it logs at the end), peak RSS is the child's ``ru_maxrss`` (``os.wait4``), also given over the RSS that the
forked process starts with (``base``: a child that does nothing). The runs alternate (size by size, writers
setting by setting, ``--repeats`` rounds) and their banks are checked to be byte-identical per size.
``encode_hash_ms_per_record``: in this process, the median time to PNG-encode and sha256 one bank image and its
mask of that size: the work that the writer threads take off the loop; its share of the serial time per record
gives ``pool_bound_with_free_cores`` = 1 / (1 - share), the most a pool can gain when each writer thread finds
an idle core (it cannot on a machine whose cores are busy: compare ``cpu_per_wall``, the child's CPU seconds over
its wall seconds, above 1 only when its threads really ran at the same time).

    python benchmarks/bench_writers.py                    # CPU, 8 images x 3 defects x 2 records per size
    python benchmarks/bench_writers.py --smoke            # seconds: checks the script still works
    python benchmarks/bench_writers.py --writers 0 2 4 --repeats 2 --json bench_writers.json
"""

import hashlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CATEGORY, SUPPORT, link_images, make_bank, normal_images, parse, parser, report

LOOP_MESSAGE = "rank %d: %d images in %.1f s (%.2f images/s)"  # generate's own log line at the end of its loop


def make_large(folder: Path, files: list[Path], size: tuple[int, int]) -> None:
    """The normal images upscaled (bicubic) to ``size`` = (width, height), as PNG files in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True)
    for file in files:
        Image.open(file).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(folder / file.name)


class _LoopTime(logging.Handler):
    """Catches generate's end-of-loop log record (its arguments hold the unrounded seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: tuple[int, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == LOOP_MESSAGE:
            self.found = int(record.args[1]), float(record.args[2])


def _child(normal: Path, output: Path, writers: int, args: Any, result: Path) -> None:
    """In the forked child: one ``generate`` run; its loop's images and seconds go to ``result``."""
    handler = _LoopTime()
    logger = logging.getLogger("anomalib_anogen.generate.run")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # for the end-of-loop line; the root handler prints warnings only
    for root_handler in logging.getLogger().handlers:
        root_handler.setLevel(logging.WARNING)
    started = time.perf_counter()
    make_bank(
        output,
        normal,
        backend="paste",
        support=str(SUPPORT),
        category=CATEGORY,  # the paper's bottle priors, also for the scratch folders (no category in their path)
        per_image=args.per_image,
        samples_per_box=args.samples_per_box,
        writers=writers,
    )
    if handler.found is None:
        msg = "generate logged no end-of-loop line"
        raise SystemExit(msg)
    images, seconds = handler.found
    result.write_text(json.dumps({"images": images, "loop_s": seconds, "wall_s": time.perf_counter() - started}))


def run_forked(normal: Path | None, output: Path, writers: int, args: Any) -> dict[str, Any]:
    """One run in a forked child: its loop's images/s and its peak RSS (MiB); ``normal=None``: an idle child."""
    result = output.with_suffix(".json")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            if normal is not None:
                _child(normal, output, writers, args, result)
            code = 0
        except BaseException as error:  # reported; the parent fails on the exit code
            print(f"bench_writers child: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        msg = f"the run with --writers {writers} on {normal} failed (exit status {status})"
        raise SystemExit(msg)
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    if normal is None:
        return {"peak_rss_mib": peak}
    measured = json.loads(result.read_text())
    cpu = usage.ru_utime + usage.ru_stime  # all the child's threads
    return {
        **measured,
        "images_per_s": measured["images"] / measured["loop_s"],
        "peak_rss_mib": peak,
        "cpu_per_wall": cpu / wall,
    }


def bank_digest(bank: Path) -> str:
    """One sha256 over every file of a bank (relative path and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in bank.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(bank)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def encode_hash_ms(bank: Path, repeats: int) -> float:
    """Median ms to PNG-encode and sha256 one bank image and its mask (the bank's first record)."""
    import numpy as np
    from PIL import Image

    from anomalib_anogen.core.files import png_bytes, sha256_bytes

    record = json.loads((bank / "manifest.jsonl").read_text().splitlines()[0])
    image = np.asarray(Image.open(bank / "images" / record["defect"] / f"{record['id']}.png").convert("RGB"))
    mask = np.asarray(Image.open(bank / "masks" / record["defect"] / f"{record['id']}_mask.png").convert("L"))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sha256_bytes(png_bytes(image))
        sha256_bytes(png_bytes(mask))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def bank_mib_per_record(bank: Path) -> float:
    """Disk use of the bank's images and masks per record, MiB."""
    records = len((bank / "manifest.jsonl").read_text().splitlines())
    size = sum(p.stat().st_size for folder in ("images", "masks") for p in (bank / folder).rglob("*.png"))
    return size / records / 2**20


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--images", type=int, default=8, help="normal images per size")
    parser_.add_argument("--per_image", type=int, default=2, help="records per image and defect")
    parser_.add_argument("--samples_per_box", type=int, default=2, help="paper: 2")
    parser_.add_argument("--large", default="2448x2048", help="the large size, WIDTHxHEIGHT")
    parser_.add_argument("--writers", type=int, nargs="+", default=[0, 2], help="--writers values to compare")
    parser_.add_argument("--repeats", type=int, default=1, help="rounds of all runs (results are their means)")
    smoke = {"images": 1, "per_image": 1, "samples_per_box": 1, "large": "320x256", "repeats": 1}
    args = parse(parser_, argv, smoke)
    width, height = (int(side) for side in args.large.lower().split("x"))
    large_tag = f"{width}x{height}"

    import lightning.fabric  # noqa: F401 (imported once here, before the forks, as generate's loop needs it)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    files = normal_images(args.images)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_writers_") as folder:
        scratch = Path(folder)
        normals = {"256px": scratch / "normal_256"}
        link_images(normals["256px"], files)
        normals[large_tag] = scratch / f"normal_{large_tag}"
        make_large(normals[large_tag], files, (width, height))
        base = run_forked(None, scratch / "idle", 0, args)["peak_rss_mib"]
        results: dict[str, Any] = {
            "normal_images": len(files),
            "defects": len([p for p in SUPPORT.iterdir() if p.is_dir()]),
            "per_image": args.per_image,
            "cpu_cores": os.cpu_count() or 0,
            "base_rss_mib": base,
        }
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        digests: dict[str, set[str]] = {}
        for round_ in range(args.repeats):
            for tag, normal in normals.items():
                for writers in args.writers:
                    output = scratch / f"bank_{tag}_w{writers}_{round_}"
                    runs.setdefault((tag, writers), []).append(run_forked(normal, output, writers, args))
                    digests.setdefault(tag, set()).add(bank_digest(output))
                    if round_ == 0 and writers == args.writers[0]:
                        results[f"{tag}_encode_hash_ms_per_record"] = encode_hash_ms(output, 3 if args.smoke else 5)
                        results[f"{tag}_bank_mib_per_record"] = bank_mib_per_record(output)
                    shutil.rmtree(output)
        for tag in normals:
            serial = args.writers[0]
            for writers in args.writers:
                measured = runs[(tag, writers)]
                rate = statistics.mean(run["images_per_s"] for run in measured)
                peak = max(run["peak_rss_mib"] for run in measured)
                results[f"{tag}_writers{writers}_images_per_s"] = rate
                results[f"{tag}_writers{writers}_cpu_per_wall"] = statistics.mean(r["cpu_per_wall"] for r in measured)
                results[f"{tag}_writers{writers}_peak_rss_mib"] = peak
                results[f"{tag}_writers{writers}_peak_rss_over_base_mib"] = peak - base
                if writers != serial:
                    serial_rate = statistics.mean(run["images_per_s"] for run in runs[(tag, serial)])
                    results[f"{tag}_writers{writers}_over_writers{serial}"] = rate / serial_rate
            # What taking the encoding and hashing off the loop can give at most, given a free core per writer.
            serial_ms = 1e3 / statistics.mean(run["images_per_s"] for run in runs[(tag, serial)])
            results[f"{tag}_serial_ms_per_record"] = serial_ms
            share = min(results[f"{tag}_encode_hash_ms_per_record"] / serial_ms, 0.99)
            results[f"{tag}_encode_hash_share_of_serial"] = share
            results[f"{tag}_pool_bound_with_free_cores"] = 1 / (1 - share)
            results[f"{tag}_records"] = runs[(tag, serial)][0]["images"]
            results[f"{tag}_banks_identical"] = len(digests[tag]) == 1
        results["benchmark_s"] = time.perf_counter() - started

    report(results, args.json)
    if not all(results[f"{tag}_banks_identical"] for tag in normals):
        print("error: the banks of one size differ between --writers settings", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
