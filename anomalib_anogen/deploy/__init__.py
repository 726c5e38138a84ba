"""Deploying an exported model on CPU line PCs: explicit OpenVINO precision, torch parity, CPU facts.

OpenVINO's CPU plugin picks the inference precision itself unless told: ``f32`` on AVX2-only CPUs,
``bf16`` on CPUs with AVX-512 BF16 or AMX. An "FP32" export therefore runs in bf16 on most modern
Xeon/EPYC line PCs. Everything here makes the precision an explicit, recorded choice; ``deploy_check``
(``anogen deploy-check``) makes it from measurements on the user's own images; see docs/deploy.md.
"""

from .check import DeployCheckOptions, DeployReport, deploy_check
from .choice import DeployChoice, choice_path, read_choice
from .inference import load_inferencer
from .openvino import PRECISIONS, CpuInfo, compiled_precision, cpu_info, emulate_bf16, openvino_config
from .parity import Parity, check_parity, export_raw, raw_outputs

__all__ = [
    "PRECISIONS",
    "CpuInfo",
    "DeployCheckOptions",
    "DeployChoice",
    "DeployReport",
    "Parity",
    "check_parity",
    "choice_path",
    "compiled_precision",
    "cpu_info",
    "deploy_check",
    "emulate_bf16",
    "export_raw",
    "load_inferencer",
    "openvino_config",
    "raw_outputs",
    "read_choice",
]
