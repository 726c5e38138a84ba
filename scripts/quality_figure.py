"""The picture of docs/quality.md: one record of each kind of a faulty bank, with its three measures and verdict.

    python scripts/quality_figure.py BANK_FAULTY --output docs/img/quality_measures.png [--cell 160]

BANK_FAULTY is a copy made by ``python -m anomalib_anogen.generate.faults`` (its ``faults.json`` says which record
got which fault). Pairs of columns: a clean record and one record of each fault (invisible, off the object,
leaking), each beside its normal source, the box outlined in red; under each, its visibility, on_object and leak,
on a red strip when the gate rejects it (measured as ``anogen check`` does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anomalib_anogen.data.bank import load_bank
from anomalib_anogen.generate.check import measure_bank
from anomalib_anogen.generate.faults import FAULTS, FAULTS_NAME
from anomalib_anogen.generate.show import TITLE, _cell, _outlined

KINDS = ("clean", *FAULTS)
NAMES = {"clean": "clean", "invisible": "invisible (5% opacity)", "off_object": "off the object", "leak": "leaking"}


def _label(lines: list[str], width: int, rejected: bool) -> np.ndarray:
    strip = Image.new("RGB", (width, TITLE * len(lines)), (140, 0, 0) if rejected else (40, 40, 40))
    draw = ImageDraw.Draw(strip)
    for index, line in enumerate(lines):
        draw.text((4, 4 + TITLE * index), line, fill=(255, 255, 255))
    return np.asarray(strip)


def main() -> None:
    """Write the figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bank", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--cell", type=int, default=128)
    args = parser.parse_args()
    faults = json.loads((args.bank / FAULTS_NAME).read_text())["faults"]
    records = load_bank(args.bank)
    result = measure_bank(args.bank)
    chosen = {}
    for record in records:
        kind = faults.get(record.record_id, "clean")
        chosen.setdefault(kind, record)
    missing = [kind for kind in KINDS if kind not in chosen]
    if missing:
        parser.error(f"{args.bank}: no record of {', '.join(missing)}")
    cell = args.cell
    columns = []
    for kind in KINDS:
        record = chosen[kind]
        verdict = result.records[record.record_id]
        quality = verdict["quality"]
        lines = [
            "accepted",
            f"visibility {quality['visibility']:.2f}",
            f"on_object {quality['on_object']:.2f}",
            f"leak {quality['leak']:.2f}",
        ]
        if verdict["rejected"]:
            lines[0] = f"rejected: {', '.join(verdict['rejected_for'])}"
        source = [f"{NAMES[kind]}:", "the normal source", "", ""]
        columns.append(np.concatenate([_cell(record.source, cell), _label(source, cell, False)]))
        columns.append(np.concatenate([_outlined(record, cell), _label(lines, cell, verdict["rejected"])]))
    figure = np.concatenate(columns, axis=1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(args.output, optimize=True)
    print(f"{args.output}: {figure.shape[1]}x{figure.shape[0]} px")


if __name__ == "__main__":
    main()
