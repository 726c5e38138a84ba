"""``anogen learn`` and ``anogen import-embedding`` as functions: validate everything, then learn or convert.

Several defect types are spread over several GPUs with Lightning Fabric, one defect per device at a time
(``defects[rank::world_size]``); each rank learns on its own, no gradient is synchronised. On a CPU (or one
GPU) the defects are learned one after the other in this process.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomalib_anogen import __version__
from anomalib_anogen.core.devices import launch_fabric
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import check_free, sha256_file
from anomalib_anogen.core.threads import SMALL_BACKBONES, thread_count, torch_threads
from anomalib_anogen.data.support import LoadedPair, SupportSet, discover_support, load_support
from anomalib_anogen.learn.options import ImportEmbeddingOptions, LearnConfig, LearnOptions

logger = logging.getLogger(__name__)

EMBEDDING_ROOM = 256 * 1024  # bytes one defect's folder may need (the LDM's 1280 floats and the json: ~10 KiB)


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


def learn(options: LearnOptions) -> list[Path]:
    """Learn one anomaly embedding per defect type found in a support folder (AnoGen stage 1).

    The options are checked when they are built; see :class:`~anomalib_anogen.learn.options.LearnOptions`.

    Returns:
        The defect folders this run wrote (kept defects are logged, not returned).
    """
    from anomalib_anogen.learn.embeddings import check_embeddings_output

    config = options.config()
    found = discover_support(options.support, shots=options.shots, seed=options.seed, defects=options.defects)
    names = found.defects
    if "{defect}" not in options.token and len(names) > 1:
        msg = f"--token {options.token!r} has no {{defect}} but {len(names)} defects would share it"
        raise AnogenInputError(msg)
    loaded = load_support(found)
    output = Path(options.output).expanduser()
    finished = check_embeddings_output(output, names, options.overwrite, keep_finished=True)
    planned = {name: _planned_metadata(name, options.token, config, found, loaded[name]) for name in names}
    kept = {name: _check_kept(output / name, planned[name]) for name in finished}
    todo = [name for name in names if name not in kept]
    if todo:  # before minutes of training, not after: an embedding and its json are a few KiB
        check_free(output, EMBEDDING_ROOM * len(todo), f"learning {len(todo)} defect(s)", "run the same command again")
    fabric = launch_fabric(options.accelerator, options.devices, max(1, len(todo)), options.num_nodes, config.precision)
    small = fabric.device.type == "cpu" and options.backbone in SMALL_BACKBONES
    threads = thread_count(options.threads, small) if fabric.device.type == "cpu" else None
    share = _Share(config, planned, kept, loaded, todo[fabric.global_rank :: fabric.world_size], output)
    with torch_threads(threads):
        written = _learn_on_rank(options, share, fabric)
    fabric.barrier()
    return written


@dataclass(frozen=True)
class _Share:
    """What one rank learns: the hyper-parameters, each defect's planned metadata and support, its share."""

    config: LearnConfig
    planned: dict[str, dict[str, Any]]
    kept: dict[str, dict[str, Any]]
    loaded: dict[str, list[LoadedPair]]
    mine: list[str]
    output: Path


def _planned_metadata(
    defect: str, token_template: str, config: LearnConfig, found: SupportSet, pairs: list[LoadedPair]
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


def _learn_on_rank(options: LearnOptions, share: _Share, fabric: Any) -> list[Path]:
    import torch

    from anomalib_anogen.core.backbones import load_backbone
    from anomalib_anogen.learn.embeddings import METADATA_FORMAT, write_embedding_dir
    from anomalib_anogen.learn.textual_inversion import check_token, learn_embedding

    config, planned, kept, loaded, output = share.config, share.planned, share.kept, share.loaded, share.output
    model = load_backbone(options.backbone, revision=options.revision, seed=config.seed)
    model.to(fabric.device)
    described = model.describe()
    resolution = config.resolution or model.resolution
    for plan in planned.values():
        plan["backbone"] = described
        plan["hyperparameters"]["resolution"] = resolution
    for defect, metadata in kept.items():
        _refuse_if_different(output / defect, metadata, planned[defect], backbone_stage=True)
    for defect in share.mine:
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
    for defect in share.mine:
        plan = planned[defect]
        if torch.cuda.is_available() and fabric.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(fabric.device)
        result = learn_embedding(
            model,
            loaded[defect],
            plan["token"],
            config,
            device=fabric.device,
            progress=options.progress,
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
        folder = write_embedding_dir(
            output,
            defect,
            plan["token"],
            result.vector,
            metadata,
            options.overwrite,
            "run the same command again to learn the others (the defects finished before are kept)",
        )
        logger.info("%s: loss %.4f -> %.4f, wrote %s", defect, result.loss_start, result.loss_end, folder)
        written.append(folder)
    return written


def import_embedding(options: ImportEmbeddingOptions) -> list[Path]:
    """Convert the authors' released embeddings.pt files into the anogen format for the LDM backbone.

    The options are checked when they are built; see :class:`~anomalib_anogen.learn.options.ImportEmbeddingOptions`.
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

    defect, category, token = options.defect, options.category, options.token
    files = released_inputs(options.inputs, category)
    if defect is not None and len(files) != 1:
        msg = f"--defect names one output but {len(files)} input files were given"
        raise AnogenInputError(msg)
    names = [defect or released_defect_name(file, category) for file in files]
    if len(set(names)) != len(names):
        msg = f"two input files map to the same defect name ({sorted(names)})"
        raise AnogenInputError(msg)
    loaded = [load_released(file) for file in files]  # every file is checked before anything is written
    output_path = Path(options.output).expanduser()
    check_embeddings_output(output_path, names, options.overwrite)
    check_free(output_path, EMBEDDING_ROOM * len(names), f"importing {len(names)} embedding(s)", "run it again")
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
        again = "run the same command with --overwrite true" if written else "run the same command again"
        folder = write_embedding_dir(output_path, name, token, vector, metadata, options.overwrite, again)
        logger.info("%s: wrote %s and %s from %s", name, folder / EMBEDDING_FILE, METADATA_FILE, file)
        written.append(folder)
    return written
