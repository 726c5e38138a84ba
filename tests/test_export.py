"""Export to OpenVINO through anomalib's Engine, and parity of OpenVINOInferencer with torch."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_anogen.models import DraemWeak

from .conftest import BOTTLE


def test_openvino_anomaly_maps_match_torch(tmp_path: Path, toy_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    seed_everything(0)
    size = (64, 64)
    model = DraemWeak(
        reconstructive_width=8,
        discriminative_width=4,
        pre_processor=DraemWeak.configure_pre_processor(size),
        visualizer=False,
    )
    datamodule = MVTecAD(root=toy_root, category="toy_bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(
        default_root_dir=tmp_path,
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    xml_path = Path(
        engine.export(
            model=model,
            export_type=ExportType.OPENVINO,
            export_root=tmp_path,
            input_size=size,
            onnx_kwargs={"opset_version": 18},
        ),
    )
    assert xml_path.suffix == ".xml" and xml_path.with_suffix(".bin").is_file()

    if (BOTTLE / "test").is_dir():
        images = sorted((BOTTLE / "test").rglob("*.png"))[::6]
    else:
        images = sorted((toy_root / "toy_bottle" / "test").rglob("*.png"))
    assert images
    inferencer = OpenVINOInferencer(path=xml_path, device="CPU")
    model.eval()
    differences = []
    for path in images:
        array = np.array(Image.open(path).convert("RGB").resize(size, Image.BILINEAR))
        tensor = torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)
        openvino_map = np.asarray(inferencer.predict(tensor).anomaly_map).squeeze()
        with torch.no_grad():
            torch_map = model(tensor).anomaly_map.squeeze().numpy()
        assert openvino_map.shape == torch_map.shape == size
        differences.append(float(np.abs(openvino_map - torch_map).max()))
    assert max(differences) < 1e-3, differences
