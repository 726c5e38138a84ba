"""``anogen learn`` and ``anogen import-embedding`` as functions: validate everything, then learn or convert.

Several defect types are spread over several GPUs with Lightning Fabric, one defect per device at a time
(``defects[rank::world_size]``); each rank learns on its own, no gradient is synchronised. On a CPU (or one
GPU) the defects are learned one after the other in this process.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from anomalib_anogen import __version__
from anomalib_anogen.core.devices import check_devices, launch_fabric
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.core.threads import torch_threads
from anomalib_anogen.data.support import LoadedPair, SupportSet, discover_support, load_support

logger = logging.getLogger(__name__)

DEFAULT_TOKEN = "<anogen-{defect}>"


def token_for(template: str, defect: str) -> str:
    """The placeholder token of ``defect`` (``{defect}`` in the template is replaced)."""
    return template.replace("{defect}", defect)


def _support_record(support: SupportSet, pairs: list[LoadedPair]) -> dict[str, Any]:
    root = support.root.resolve()

    def rel(path: Path) -> str:
        resolved = path.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    record: dict[str, Any] = {
        "root": str(root),
        "layout": support.layout,
        "files": [
            {
                "image": rel(p.pair.image),
                "image_sha256": sha256_file(p.pair.image),
                "mask": rel(p.pair.mask),
                "mask_sha256": sha256_file(p.pair.mask),
                "mask_fraction": round(p.mask_fraction, 6),
                "size": [p.image.width, p.image.height],
                "mask_resized": p.mask_resized,
            }
            for p in pairs
        ],
    }
    if support.shots is not None:
        defect = pairs[0].pair.defect
        record.update(
            shots=support.shots,
            selection_seed=support.selection_seed,
            available=support.available.get(defect),
            selected=[rel(p.pair.image) for p in pairs],
        )
    return record


def _check_run_options(accelerator: str, devices: int | str, num_nodes: int, threads: int | None) -> None:
    """Refuse run options out of range (the hyper-parameters are LearnConfig.validate's)."""
    check_devices(accelerator, devices, num_nodes)
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        msg = f"--threads must lie in [1, {cores}], the CPU cores of this machine (got {threads})"
        raise AnogenInputError(msg)


def learn(
    support: str,
    output: str,
    backbone: str,
    revision: str | None = None,
    defects: list[str] | None = None,
    shots: int | None = None,
    steps: int = 6000,
    lr: float = 5e-3,
    scale_lr: bool = True,
    batch_size: int = 4,
    resolution: int | None = None,
    seed: int = 0,
    token: str = DEFAULT_TOKEN,
    init_word: str = "defect",
    hflip_p: float = 0.5,
    precision: str = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> list[Path]:
    """Learn one anomaly embedding per defect type found in a support folder (AnoGen stage 1).

    Args:
        support: Support folder: <defect>/<name>.png with <defect>/<name>_mask.png, or an MVTec category
            (test/<defect>/ with ground_truth/<defect>/), from which --shots images per defect are drawn.
        output: Folder that receives <defect>/learned_embeds.safetensors and <defect>/anogen_embedding.json.
        backbone: tiny | tiny-ldm (built in, random weights) | a diffusers SD 1.x/2.x or LDMTextToImagePipeline
            folder or hub id.
        revision: Hub revision (branch, tag or commit) when --backbone is a hub id.
        defects: Only these defect types (default: every one found).
        shots: Support images per defect, 1 or more (default: all in the support layout, 3 in the MVTec layout).
        steps: Optimisation steps per defect, 1 to 1000000 (paper: 6000).
        lr: Base learning rate per sample, in (0, 1]; the rate used is lr x batch_size when --scale_lr (as the
            paper's code).
        scale_lr: Multiply --lr by the batch size (the LDM textual-inversion rule).
        batch_size: Support samples per step, 1 to 1024 (drawn with replacement across epochs of shuffled images).
        resolution: Training resolution in pixels, a multiple of 8 in [8, 2048] (default: the backbone's native one).
        seed: Seed of the support selection, flips, noise, timesteps and prompts (and of random-weight backbones),
            0 to 2**32 - 1.
        token: Placeholder token; {defect} is replaced by the defect name.
        init_word: Word whose embedding initialises the token (must be one token).
        hflip_p: Probability of a horizontal flip in [0, 1], applied to image and mask together.
        precision: auto (bf16 autocast on a GPU, fp16 with a gradient scaler where bf16 is missing; fp32 on a
            CPU) | 32 | bf16 | fp16; a CPU always trains in fp32.
        accelerator: auto | cpu | gpu.
        devices: GPUs to spread the defects over, 1 or more (auto: all, at most one per defect).
        num_nodes: Machines to spread the defects over, each started by torchrun or SLURM (docs/learn.md); 1 or more.
        overwrite: Replace finished embeddings in --output (refused otherwise).
        progress: Show a progress bar with the current loss.
        threads: CPU threads for torch, 1 to the machine's core count (default: 1 for the tiny backbones, whose
            ops are too small to split across threads, else torch's default).

    A rerun into the same --output keeps each finished defect learned with the same settings (checked: the
    embedding's sha256, every hyper-parameter, the prompt templates, the support files' content, the backbone's
    weights) and learns the others; other settings are refused unless --overwrite, which relearns every defect.

    Returns:
        The defect folders this run wrote (kept defects are logged, not returned).
    """
    from anomalib_anogen.learn.embeddings import check_embeddings_output
    from anomalib_anogen.learn.textual_inversion import LearnConfig

    config = LearnConfig(
        steps=steps,
        lr=lr,
        scale_lr=scale_lr,
        batch_size=batch_size,
        resolution=resolution,
        seed=seed,
        init_word=init_word,
        hflip_p=hflip_p,
        precision=precision,
    )
    config.validate()
    _check_run_options(accelerator, devices, num_nodes, threads)
    found = discover_support(support, shots=shots, seed=seed, defects=defects)
    names = found.defects
    if "{defect}" not in token and len(names) > 1:
        msg = f"--token {token!r} has no {{defect}} but {len(names)} defects would share it"
        raise AnogenInputError(msg)
    loaded = load_support(found)
    output_path = Path(output).expanduser()
    finished = check_embeddings_output(output_path, names, overwrite, keep_finished=True)
    planned = {name: _planned_metadata(name, token, config, found, loaded[name]) for name in names}
    kept = {name: _check_kept(output_path / name, planned[name]) for name in finished}
    todo = [name for name in names if name not in kept]
    fabric = launch_fabric(accelerator, devices, max(1, len(todo)), num_nodes, config.precision)
    on_cpu = fabric.device.type == "cpu"
    cpu_threads = (threads or 1) if on_cpu and (threads is not None or backbone in {"tiny", "tiny-ldm"}) else None
    mine = todo[fabric.global_rank :: fabric.world_size]
    with torch_threads(cpu_threads):
        written = _learn_on_rank(
            backbone, revision, config, planned, kept, loaded, mine, output_path, overwrite, fabric, progress
        )
    fabric.barrier()
    return written


def _planned_metadata(
    defect: str, token_template: str, config: Any, found: SupportSet, pairs: list[LoadedPair]
) -> dict[str, Any]:
    """What this run will record for ``defect`` before training; the backbone and resolution come once it is loaded."""
    from anomalib_anogen.learn.textual_inversion import config_dict

    return {
        "defect": defect,
        "token": token_for(token_template, defect),
        "init_word": config.init_word,
        "prompt_templates": _templates_record(),
        "hyperparameters": {
            **config_dict(config),
            "token_template": token_template,
            "lr_effective": config.effective_lr(),
            "lr_rule": "lr x batch_size (scale_lr)" if config.scale_lr else "lr",
        },
        "seed": config.seed,
        "support": _support_record(found, pairs),
    }


def _templates_record() -> dict[str, Any]:
    """The prompt templates a run learns with (``textual_inversion.TEMPLATES``): count, sha256 and source."""
    from anomalib_anogen.learn.textual_inversion import TEMPLATES, templates_sha256

    return {
        "count": len(TEMPLATES),
        "distinct": len(set(TEMPLATES)),
        "sha256": templates_sha256(),
        "source": "imagenet_templates_small of gaobb/AnoGen DIFFUSION/ldm/data/personalized.py",
    }


# Settings known only once the backbone is loaded: compared then, before the first training step.
_BACKBONE_SETTINGS = ("backbone", "resolution")


def _settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """What makes a finished embedding the one this run would learn, from its metadata.

    Every hyper-parameter, the token, the prompt templates (by sha256), the support files by relative name and
    content, and the backbone's weights; not where the support folder or the backbone lie.
    """
    hyper = metadata.get("hyperparameters") or {}
    support = metadata.get("support") or {}
    files = [
        {key: item.get(key) for key in ("image", "image_sha256", "mask", "mask_sha256")}
        for item in support.get("files") or []
    ]
    settings = {key: value for key, value in hyper.items() if key not in {"lr_effective", "lr_rule", "token_template"}}
    return {
        **settings,
        "token": metadata.get("token"),
        "prompt templates": (metadata.get("prompt_templates") or {}).get("sha256"),
        "support files": files,
        "shots": support.get("shots"),
        "selection_seed": support.get("selection_seed"),
        "backbone": (metadata.get("backbone") or {}).get("weights_sha256"),
    }


def _support_changes(before: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    """``support files: added a.png; removed b.png; changed c.png`` (an image and its mask count as one)."""
    old = {item["image"]: item for item in before}
    new = {item["image"]: item for item in now}
    parts = [
        f"{what} {', '.join(names)}"
        for what, names in (
            ("added", sorted(set(new) - set(old))),
            ("removed", sorted(set(old) - set(new))),
            ("changed", sorted(name for name in set(old) & set(new) if old[name] != new[name])),
        )
        if names
    ]
    return "support files: " + "; ".join(parts or ["reordered"])


def _refuse_if_different(folder: Path, old: dict[str, Any], new: dict[str, Any], backbone_stage: bool) -> None:
    before, now = _settings(old), _settings(new)
    keys = [key for key in now if (key in _BACKBONE_SETTINGS) == backbone_stage]
    changed = []
    for key in keys:
        if before.get(key) == now[key]:
            continue
        if key == "support files":
            changed.append(_support_changes(before.get(key) or [], now[key]))
        elif key == "prompt templates":
            was, now_templates = old.get("prompt_templates") or {}, new.get("prompt_templates") or {}
            changed.append(
                f"prompt templates (learned with {was.get('count')} templates, sha256 {str(before.get(key))[:12]}...; "
                f"now {now_templates.get('count')} templates, sha256 {str(now[key])[:12]}...)"
            )
        elif key == "backbone":
            recorded = (old.get("backbone") or {}).get("id")
            changed.append(
                f"backbone weights (learned on {recorded!r}, sha256 {str(before.get(key))[:12]}..., "
                f"now {str(now[key])[:12]}...)"
            )
        else:
            changed.append(f"{key} {before.get(key)!r}, now {now[key]!r}")
    if changed:
        msg = (
            f"{folder}: learned with other settings than this run ({'; '.join(changed)}); "
            "pass --overwrite to relearn every defect, or choose another --output"
        )
        raise AnogenInputError(msg)


def _check_kept(folder: Path, planned: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a finished defect that this run keeps: intact, and learned with the same settings."""
    from anomalib_anogen.learn.embeddings import METADATA_FILE, load_embedding

    try:
        metadata = load_embedding(folder).metadata
    except AnogenInputError as error:
        msg = f"{error}; --overwrite relearns every defect"
        raise AnogenInputError(msg) from error
    if not isinstance(metadata.get("hyperparameters"), dict):
        msg = (
            f"{folder}: holds an embedding that anogen learn did not write (no hyper-parameters in its "
            f"{METADATA_FILE}); pass --overwrite to relearn every defect, or choose another --output"
        )
        raise AnogenInputError(msg)
    _refuse_if_different(folder, metadata, planned, backbone_stage=False)
    return metadata


def _learn_on_rank(
    backbone_spec: str,
    revision: str | None,
    config: Any,
    planned: dict[str, dict[str, Any]],
    kept: dict[str, dict[str, Any]],
    loaded: dict[str, list[LoadedPair]],
    mine: list[str],
    output: Path,
    overwrite: bool,
    fabric: Any,
    progress: bool,
) -> list[Path]:
    import torch

    from anomalib_anogen.core.backbones import load_backbone
    from anomalib_anogen.learn.embeddings import METADATA_FORMAT, write_embedding_dir
    from anomalib_anogen.learn.textual_inversion import check_token, learn_embedding

    model = load_backbone(backbone_spec, revision=revision, seed=config.seed)
    model.to(fabric.device)
    described = model.describe()
    resolution = config.resolution or model.resolution
    for plan in planned.values():
        plan["backbone"] = described
        plan["hyperparameters"]["resolution"] = resolution
    for defect, metadata in kept.items():
        _refuse_if_different(output / defect, metadata, planned[defect], backbone_stage=True)
    for defect in mine:
        check_token(model, planned[defect]["token"], config.init_word)
    if fabric.global_rank == 0:
        for defect in kept:
            logger.info("%s: kept %s, learned before with the same settings", defect, output / defect)
        todo = [name for name in planned if name not in kept]
        if todo:
            logger.info("learning %s into %s", ", ".join(todo), output)
        else:
            logger.info("%s: every defect is already learned with these settings (--overwrite relearns)", output)
    written = []
    for defect in mine:
        plan = planned[defect]
        if torch.cuda.is_available() and fabric.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(fabric.device)
        result = learn_embedding(
            model,
            loaded[defect],
            plan["token"],
            config,
            device=fabric.device,
            progress=progress,
            description=defect,
            fabric=fabric,
        )
        metadata = {
            "format": METADATA_FORMAT,
            "anogen_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "defect": defect,
            "token": plan["token"],
            "init_word": plan["init_word"],
            "prompt_templates": plan["prompt_templates"],
            "embedding_shape": list(result.vector.shape),
            "backbone": described,
            "hyperparameters": {**plan["hyperparameters"], "lr_effective": result.lr, "resolution": result.resolution},
            "seed": plan["seed"],
            "loss": {
                "start": result.loss_start,
                "end": result.loss_end,
                "what": "masked noise-prediction MSE of the initial / learned token on the same 64 fixed draws",
                "train_first_window": result.train_loss_first,
                "train_last_window": result.train_loss_last,
                "window_steps": result.loss_window,
            },
            "training": {
                "device": result.device,
                "precision": result.precision,
                "seconds": round(result.seconds, 3),
                "steps_per_second": round(result.steps_per_second, 3),
            },
            "support": plan["support"],
        }
        folder = write_embedding_dir(output, defect, plan["token"], result.vector, metadata, overwrite)
        logger.info("%s: loss %.4f -> %.4f, wrote %s", defect, result.loss_start, result.loss_end, folder)
        written.append(folder)
    return written


def import_embedding(
    input: str | list[str],
    output: str,
    token: str = "*",
    category: str | None = None,
    defect: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Convert the authors' released embeddings.pt files into the anogen format for the LDM backbone.

    Args:
        input: A released .pt file or a folder of them (e.g. ../shared/data/anogen_reference/released_embeddings);
            several as a list: --input '[a.pt, b.pt]'.
        output: Folder that receives <defect>/learned_embeds.safetensors and <defect>/anogen_embedding.json.
        token: Token name in the written file (the release uses "*").
        category: Only <category>_*.pt in input folders, and strip "<category>_" from the defect names.
        defect: Defect name for a single input file (default: the file name, less "<category>_").
        overwrite: Replace finished embeddings in --output (refused otherwise).
    """
    from anomalib_anogen.learn.embeddings import (
        EMBEDDING_FILE,
        METADATA_FILE,
        METADATA_FORMAT,
        RELEASED_BACKBONE,
        check_embeddings_output,
        load_released,
        released_defect_name,
        released_inputs,
        write_embedding_dir,
    )

    if defect is not None and (not defect or defect.startswith(".") or "/" in defect or os.sep in defect):
        msg = f"--defect {defect!r} must be a folder name (not empty, no '/', not starting with '.')"
        raise AnogenInputError(msg)
    files = released_inputs([input] if isinstance(input, str) else list(input), category)
    if defect is not None and len(files) != 1:
        msg = f"--defect names one output but {len(files)} input files were given"
        raise AnogenInputError(msg)
    names = [defect or released_defect_name(file, category) for file in files]
    if len(set(names)) != len(names):
        msg = f"two input files map to the same defect name ({sorted(names)})"
        raise AnogenInputError(msg)
    loaded = [load_released(file) for file in files]  # every file is checked before anything is written
    output_path = Path(output).expanduser()
    check_embeddings_output(output_path, names, overwrite)
    written = []
    for file, name, (original_token, vector, token_id) in zip(files, names, loaded, strict=True):
        metadata = {
            "format": METADATA_FORMAT,
            "anogen_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "defect": name,
            "token": token,
            "init_word": None,
            "embedding_shape": list(vector.shape),
            "backbone": {
                "id": RELEASED_BACKBONE,
                "kind": "ldm",
                "source": "hub",
                "note": "LDM txt2img-f8-large (LDMBert, 1280 wide, 256 px), as the AnoGen authors trained it",
            },
            "imported_from": {
                "file": str(file.resolve()),
                "sha256": sha256_file(file),
                "token": original_token,
                "token_id": token_id,
                "token_id_note": "id in the BERT tokenizer of the original LDM code (bert-base-uncased)",
            },
        }
        folder = write_embedding_dir(output_path, name, token, vector, metadata, overwrite)
        logger.info("%s: wrote %s and %s from %s", name, folder / EMBEDDING_FILE, METADATA_FILE, file)
        written.append(folder)
    return written
