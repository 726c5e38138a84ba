"""docs/your-own-product.md end to end at tiny size: a product that is not in MVTec AD, few anomalies to an export.

The ``anogen`` and ``anomalib`` CLIs run as a user runs them, from the few real anomalies to an OpenVINO export.

The dataset is built here (anomalib's ``Folder`` layout, no MVTec AD name in any path, 64 px); ``anogen learn`` on
the ``tiny`` backbone (1 step), ``anogen generate --priors auto`` without ``--category`` (with and without a
``--placement`` ROI), ``anomalib train`` of ``DraemWeak`` (widths 8/4, 1 step, 64 px) on the bank with
``--data Folder``, then ``anomalib test`` and ``anomalib export``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.data.toy import PRODUCT_DEFECTS, make_toy_product

from .helpers.cli import cli_server
from .helpers.cli_server import CliServer

pytestmark = pytest.mark.slow

SIZE = 64
FOLDER_DATA = [
    "--data", "Folder", "--data.name", "gadget", "--data.root", "datasets/gadget", "--data.normal_dir", "normal",
    "--data.normal_test_dir", "test_normal", "--data.abnormal_dir", "anomalous", "--data.mask_dir", "masks",
    "--data.train_batch_size", "2", "--data.eval_batch_size", "4", "--data.num_workers", "0",
]  # fmt: skip
CKPT = "results/DraemWeak/gadget/latest/weights/lightning/model.ckpt"


@pytest.fixture(scope="module")
def server() -> CliServer:
    return cli_server()


def run(server: CliServer, cwd: Path, *argv: str) -> str:
    log = cwd / f"{len(list(cwd.glob('*.log'))):02d}-{argv[0]}-{argv[1]}.log"
    result = server.run(list(argv), cwd, log)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-5000:]}"
    return result.stdout


def records(bank: Path) -> list[dict]:
    return [json.loads(line) for line in (bank / "manifest.jsonl").read_text().splitlines()]


def test_own_product_from_support_anomalies_to_an_openvino_export(tmp_path: Path, server: CliServer) -> None:
    product = make_toy_product(
        tmp_path / "datasets" / "gadget", size=SIZE, n_normal=6, n_test_normal=3, n_test_per_defect=2
    )
    run(server, tmp_path, "anogen", "learn", "--support", "datasets/gadget/support", "--backbone", "tiny",
        "--output", "runs/embeddings", "--steps", "1", "--progress", "false")  # fmt: skip
    generate = ["anogen", "generate", "--normal", "datasets/gadget/normal", "--embeddings", "runs/embeddings",
                "--support", "datasets/gadget/support", "--priors", "auto", "--max_images", "3", "--steps", "1",
                "--keep_outside", "true", "--progress", "false"]  # fmt: skip
    # (the tiny backbone's random VAE decodes the whole frame to noise: the quality gate rejects such a bank as
    # leaking, docs/quality.md; composited into the box, its records pass and the detector trains)
    log = run(server, tmp_path, *generate, "--output", "runs/bank")
    assert "--priors auto: dent: width" in log
    settings = json.loads((tmp_path / "runs" / "bank" / "bank.json").read_text())["settings"]
    assert set(settings["priors"]) == set(PRODUCT_DEFECTS) and settings["priors_auto"] is not None
    assert settings["foreground"] == "border" and settings["placement"] is None

    # without --priors: no shipped priors for this path, so auto, with a log line (and no --category needed)
    log = run(server, tmp_path, *[w for w in generate if w != "auto" and w != "--priors"], "--output", "runs/same")
    assert "deriving them from the support masks (--priors auto)" in log
    same = json.loads((tmp_path / "runs" / "same" / "bank.json").read_text())["settings"]
    assert same["priors"] == settings["priors"]

    run(server, tmp_path, *generate, "--placement", "datasets/gadget/roi.png", "--output", "runs/bank-roi")
    roi = np.asarray(Image.open(product / "roi.png").convert("L").resize((SIZE, SIZE), Image.Resampling.NEAREST)) > 0
    placed = records(tmp_path / "runs" / "bank-roi")
    assert placed and all("placement_fraction" in r for r in placed)
    for record in placed:
        mask = np.asarray(
            Image.open(tmp_path / "runs" / "bank-roi" / "masks" / record["defect"] / f"{record['id']}_mask.png")
        )
        assert record["box_fallback"] or roi[mask > 0].mean() >= 0.75, record
    run(server, tmp_path, "anogen", "show", "runs/bank-roi", "--output", "runs/sheet.png", "--cell", "32")
    assert (tmp_path / "runs" / "sheet.png").is_file()

    log = run(server, tmp_path, "anomalib", "train", "--model", "DraemWeak", "--model.generator", "anogen",
              "--model.bank_dir", "runs/bank-roi", "--model.pre_processor", "PreProcessor",
              "--model.pre_processor.transform", "Resize", "--model.pre_processor.transform.size", f"[{SIZE}, {SIZE}]",
              "--model.reconstructive_width", "8", "--model.discriminative_width", "4", *FOLDER_DATA,
              "--trainer.max_steps", "1")  # fmt: skip
    assert "pixel_AUPR" in log and (tmp_path / CKPT).is_file()
    log = run(server, tmp_path, "anomalib", "test", "--model", "DraemWeak", "--ckpt_path", CKPT, *FOLDER_DATA)
    assert "pixel_AUPR" in log
    run(server, tmp_path, "anomalib", "export", "--model", "DraemWeak", "--ckpt_path", CKPT,
        "--export_type", "openvino")  # fmt: skip
    assert (tmp_path / "results" / "weights" / "openvino" / "model.xml").is_file()
