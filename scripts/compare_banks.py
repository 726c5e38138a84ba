"""Compare two anomaly banks record by record: are their images and masks the same bytes.

    python scripts/compare_banks.py BANK_A BANK_B

Reads both manifests, pairs the records by id and compares each record's image and mask file byte for byte
(and the record's fields, less the paths that name where a bank or its normal images lie). Prints one line per
difference and a summary; exits 1 when anything differs, so a refactoring can be checked against a bank made
before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anomalib_anogen.data.bank import MANIFEST_NAME, image_path, mask_path

PLACE_FIELDS = {"source", "source_original", "support_image"}  # absolute paths: differ between two checkouts


def _records(bank: Path) -> dict[str, dict]:
    lines = (bank / MANIFEST_NAME).read_text().splitlines()
    return {record["id"]: record for record in map(json.loads, filter(None, lines))}


def compare(first: Path, second: Path) -> list[str]:
    """The differences between two banks, one line each (empty when they hold the same records and bytes)."""
    a, b = _records(first), _records(second)
    problems = [f"only in {first}: {key}" for key in sorted(set(a) - set(b))]
    problems += [f"only in {second}: {key}" for key in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        defect = a[key]["defect"]
        for kind, where in (("image", image_path), ("mask", mask_path)):
            if where(first, defect, key).read_bytes() != where(second, defect, key).read_bytes():
                problems.append(f"{key}: {kind} differs")
        keys = set(a[key]) | set(b[key])
        fields = sorted(k for k in keys if k not in PLACE_FIELDS and a[key].get(k) != b[key].get(k))
        if fields:
            problems.append(f"{key}: record fields differ ({', '.join(fields)})")
    return problems


def main() -> int:
    """Compare the two banks given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    problems = compare(args.first, args.second)
    for line in problems:
        print(line)
    count = len(_records(args.first))
    print(f"{count} records in {args.first}: {'identical' if not problems else f'{len(problems)} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
