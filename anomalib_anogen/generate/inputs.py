"""``anogen generate``'s inputs: normal images, what each defect is drawn from, box priors, the model, the options.

Everything here runs before the bank is touched, so a bad input is an :class:`AnogenInputError` naming the file
or option and nothing is written (docs/generate.md, "Bad input").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_anogen.core.checks import MAX_GENERATE_RESOLUTION, MAX_RECORDS, MIN_RESOLUTION, between, check_number
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.core.images import IMAGE_SUFFIXES, is_ignored, load_rgb
from anomalib_anogen.data.support import LoadedPair, discover_support, load_support
from anomalib_anogen.generate.backends.paste import Cutout, cut
from anomalib_anogen.generate.boxes import (
    AUTO_MARGIN,
    AUTO_MIN_COMPONENT,
    DEFAULT_PRIORS,
    BoxPrior,
    derive_prior,
    load_priors,
)
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.placement import Placement, load_placement
from anomalib_anogen.generate.work import NormalImage

if TYPE_CHECKING:
    from anomalib_anogen.core.backbones import Backbone
    from anomalib_anogen.learn.embeddings import Embedding

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefectSources:
    """What the backend draws each defect from: embeddings (diffusion) or cut-out support anomalies (paste).

    Attributes:
        names: The defect types found (sorted); :meth:`only` narrows them to those the run generates.
        embeddings: Diffusion: each defect's learned embedding.
        cutouts: Paste: each defect's support anomalies, cut by their masks.
        where: How messages name one source ("embedding in <folder>").
    """

    names: list[str]
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    cutouts: dict[str, list[Cutout]] = field(default_factory=dict)
    where: str = ""

    def only(self, names: list[str]) -> DefectSources:
        """The same sources for ``names`` only."""
        return replace(
            self,
            names=names,
            embeddings={n: e for n, e in self.embeddings.items() if n in names},
            cutouts={n: c for n, c in self.cutouts.items() if n in names},
        )


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def list_normals(folder: str | Path, max_images: int | None = None) -> list[NormalImage]:
    """The normal images directly in ``folder`` (sorted by name), each decoded once so bad files fail now."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        msg = f"{root}: normal image folder not found"
        raise AnogenInputError(msg)
    files = []
    for path in sorted(root.iterdir()):
        if path.is_dir() or is_ignored(path):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            msg = f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
            raise AnogenInputError(msg)
        files.append(path)
    if not files:
        msg = f"{root}: no normal images found"
        raise AnogenInputError(msg)
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            msg = f"{path}: same name as {stems[path.stem].name}; record ids would collide"
            raise AnogenInputError(msg)
        stems[path.stem] = path
    files = files[:max_images] if max_images else files
    return [NormalImage(i, p, sha256_file(p), load_rgb(p).size) for i, p in enumerate(files)]


def discover_embeddings(folder: str | None) -> DefectSources:
    from anomalib_anogen.learn.embeddings import is_finished, load_embedding

    if folder is None:
        msg = "--embeddings is required for --backend diffusion (or use --backend paste --support)"
        raise AnogenInputError(msg)
    root = Path(folder).expanduser()
    if not root.is_dir():
        msg = f"{root}: embeddings folder not found"
        raise AnogenInputError(msg)
    found = {p.name: load_embedding(p) for p in sorted(root.iterdir()) if p.is_dir() and is_finished(p)}
    if not found:
        msg = f"{root}: no learned embeddings (expected <defect>/learned_embeds.safetensors)"
        raise AnogenInputError(msg)
    return DefectSources(names=sorted(found), embeddings=found, where=f"embedding in {root}")


def discover_cutouts(folder: str | None) -> DefectSources:
    if folder is None:
        msg = "--support is required for --backend paste"
        raise AnogenInputError(msg)
    found = discover_support(folder)
    loaded = load_support(found)
    cutouts = {defect: [cut(pair) for pair in pairs] for defect, pairs in loaded.items()}
    return DefectSources(names=sorted(cutouts), cutouts=cutouts, where=f"support anomaly in {found.root}")


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def match_defects(
    sources: DefectSources, priors: dict[str, BoxPrior], priors_name: str, wanted: list[str] | None
) -> list[str]:
    """The defect types to generate: those with both a prior and an embedding/support set, or a clear error."""
    if wanted:
        for defect in wanted:
            if defect not in priors:
                msg = f"--defects {defect}: no box prior in {priors_name}"
                raise AnogenInputError(msg)
            if defect not in sources.names:
                msg = f"--defects {defect}: no {sources.where}"
                raise AnogenInputError(msg)
        return sorted(set(wanted))
    no_source = sorted(set(priors) - set(sources.names))
    if no_source:
        msg = (
            f"{priors_name} names defect(s) {', '.join(no_source)} without {_with_article(sources.where)} "
            f"(have: {', '.join(sources.names)}); remove them from the priors or pass --defects"
        )
        raise AnogenInputError(msg)
    no_prior = sorted(set(sources.names) - set(priors))
    if no_prior:
        msg = (
            f"defect(s) {', '.join(no_prior)} have {_with_article(sources.where)} but no box prior in {priors_name} "
            f"(it names: {', '.join(sorted(priors))}); add them or pass --defects"
        )
        raise AnogenInputError(msg)
    return sorted(priors)


@dataclass
class Priors:
    """The box priors of a run, what they are called in messages and, for derived ones, how they were derived."""

    table: dict[str, BoxPrior]
    category: str | None
    name: str
    derived: dict[str, Any] | None = None  # recorded in bank.json as settings["priors_auto"]


def _shipped_category(category: str | None, normal: Path) -> str | None:
    """The category of the shipped MVTec priors for this run, or ``None`` when they have none for it."""
    import json

    table = json.loads(DEFAULT_PRIORS.read_text())
    if category is None:
        category = next((part for part in reversed(normal.parts) if part in table), None)
    return category if category in table else None


def _support_masks(
    sources: DefectSources, support: str | None, backend: str
) -> tuple[dict[str, list[LoadedPair]], Path]:
    """Each defect's support pairs (decoded): the paste backend's own, or (diffusion) those of ``--support``."""
    if backend == "paste":
        pairs = {name: [c.source for c in cutouts] for name, cutouts in sources.cutouts.items()}
        return pairs, Path(str(support)).expanduser()
    if support is None:
        msg = (
            "--priors auto derives the box sizes from the support masks: pass --support (the folder given to "
            "`anogen learn`), or a --priors file"
        )
        raise AnogenInputError(msg)
    found = discover_support(support)
    learned = [name for name in found.defects if name in sources.names]  # support folders without an embedding
    found.pairs = {name: found.pairs[name] for name in learned}  # are not generated: no prior needed for them
    return load_support(found), found.root


def choose_priors(
    priors: str | None,
    category: str | None,
    normal: Path,
    sources: DefectSources,
    support: str | None,
    backend: str,
    margin: float,
    rotate: bool,
) -> Priors:
    """The shipped MVTec priors, a user's file, or priors derived from the support masks (``--priors auto``).

    Without ``--priors``, a category that the shipped table does not have (or none found in the ``--normal``
    path) falls back to ``auto``, with a log line; an explicit file always wins.
    """
    auto = priors == "auto"
    if priors is None:
        shipped = _shipped_category(category, normal)
        if shipped is None:
            what = f"category {category!r}" if category else f"{normal} (no MVTec category in the path)"
            if backend == "diffusion" and support is None:
                msg = (
                    f"the shipped MVTec box priors have none for {what}: pass --priors FILE, or --priors auto with "
                    "--support (the support set, whose masks give the box sizes)"
                )
                raise AnogenInputError(msg)
            logger.info(
                "the shipped MVTec box priors have none for %s: deriving them from the support masks (--priors auto)",
                what,
            )
            auto = True
        else:
            category = shipped
    if not auto and (margin != AUTO_MARGIN or not rotate):
        msg = "--priors_margin and --priors_rotate apply to priors derived from the support masks (--priors auto) only"
        raise AnogenInputError(msg)
    if not auto:
        table, found = load_priors(priors, category, normal)
        shipped_name = "the shipped MVTec priors (anomalib_anogen/generate/mvtec_box_ranges.json)"
        name = str(Path(priors).expanduser()) if priors else shipped_name
        return Priors(table, found, name)
    pairs, root = _support_masks(sources, support, backend)
    table = {
        defect: derive_prior([p.mask for p in loaded], margin, rotate, f"{root / defect}")
        for defect, loaded in sorted(pairs.items())
    }
    for defect, prior in table.items():
        logger.info(
            "--priors auto: %s: width %.3f-%.3f, height %.3f-%.3f of the image side, rotate %s (from %d support masks)",
            defect,
            *prior.width,
            *prior.height,
            str(prior.rotate).lower(),
            len(pairs[defect]),
        )
    derived = {
        "margin": margin,
        "rotate": rotate,
        "min_component": AUTO_MIN_COMPONENT,
        "masks": {d: [sha256_file(p.pair.mask) for p in loaded] for d, loaded in sorted(pairs.items())},
    }
    return Priors(table, category, f"the priors derived from the support masks in {root}", derived)


def load_model(spec: str | None, revision: str | None, sources: DefectSources) -> Backbone:
    """The backbone the embeddings were learned on (recorded in their metadata), checked by weight hash."""
    from anomalib_anogen.core.backbones import load_backbone

    recorded = {name: (e.metadata.get("backbone") or {}) for name, e in sources.embeddings.items()}
    ids = {str(info["id"]) for info in recorded.values() if info.get("id")}
    if spec is None:
        if len(ids) != 1:
            found = ", ".join(sorted(ids)) or "none recorded"
            msg = f"pass --backbone: the embeddings do not name one backbone ({found})"
            raise AnogenInputError(msg)
        spec = ids.pop()
    seeds = {info.get("seed") for info in recorded.values() if info.get("id") == spec and info.get("seed") is not None}
    model = load_backbone(spec, revision=revision, seed=int(seeds.pop()) if len(seeds) == 1 else 0)
    for name, info in recorded.items():
        expected = info.get("weights_sha256")
        if expected and expected != model.fingerprint():
            msg = (
                f"{sources.embeddings[name].path}: learned on backbone {info.get('id')!r} with other weights "
                f"than --backbone {spec!r}; generate with the backbone it was learned on"
            )
            raise AnogenInputError(msg)
    return model


def check_records(images: int, defects: int, per_image: int) -> int:
    """The number of records a run makes, refused above :data:`MAX_RECORDS` before any work.

    The work list is held in memory, and such a bank would not fit a disk either.
    """
    records = images * defects * per_image
    if records > MAX_RECORDS:
        msg = (
            f"{images} normal images x {defects} defect types x --per_image {per_image} = {records} records, more "
            f"than a bank holds ({MAX_RECORDS}); lower --per_image or --max_images, or pass fewer --defects"
        )
        raise AnogenInputError(msg)
    return records


def check_for_model(model: Backbone, steps: int, resolution: int) -> None:
    """The ranges that depend on the backbone: DDIM steps and the VAE's downsampling factor."""
    limit = int(model.noise_scheduler.config.num_train_timesteps)
    check_number("--steps", steps, between(1, limit), f"the training timesteps of backbone {model.spec}")
    factor = model.vae_scale_factor
    if resolution % factor:
        msg = f"--resolution must be a multiple of {factor}, the VAE factor of backbone {model.spec} (got {resolution})"
        raise AnogenInputError(msg)


@dataclass(frozen=True)
class Inputs:
    """What a run reads before the bank is touched, every part checked.

    Attributes:
        normals: The normal images, in work-list order.
        normal_root: Their folder, resolved.
        sources: What each generated defect is drawn from, narrowed to ``defects``.
        priors: The box priors, their name in messages and how they were derived.
        defects: The defect types to generate (sorted).
        placement: ``--placement``'s regions, or ``None``.
        model: The diffusion backbone (``None`` for paste).
        resolution: The output side in pixels.
    """

    normals: list[NormalImage]
    normal_root: Path
    sources: DefectSources
    priors: Priors
    defects: list[str]
    placement: Placement | None
    model: Backbone | None
    resolution: int


def read_inputs(options: GenerateOptions) -> Inputs:
    """Read and check everything the run needs, in the order a user would fix it; nothing is written."""
    normals = list_normals(options.normal, options.max_images)
    normal_root = Path(options.normal).expanduser().resolve()
    diffusion = options.backend == "diffusion"
    found = discover_embeddings(options.embeddings) if diffusion else discover_cutouts(options.support)
    priors = choose_priors(
        options.priors,
        options.category,
        normal_root,
        found,
        options.support,
        options.backend,
        options.priors_margin,
        options.priors_rotate,
    )
    names = match_defects(found, priors.table, priors.name, options.defects)
    check_records(len(normals), len(names), options.per_image)
    placement = (
        load_placement(options.placement, names, found.names, priors.category, options.placement_foreground)
        if options.placement
        else None
    )
    sources = found.only(names)
    model = load_model(options.backbone, options.revision, sources) if diffusion else None
    resolution = options.resolution
    if resolution is None:
        resolution = model.resolution if model is not None else normals[0].size[0]
        check_number("--resolution", resolution, between(MIN_RESOLUTION, MAX_GENERATE_RESOLUTION))
    if model is not None:
        check_for_model(model, options.steps, resolution)
    options.check_feather(resolution)
    _warn_resized(normals, resolution)
    return Inputs(normals, normal_root, sources, priors, names, placement, model, resolution)


def _warn_resized(normals: list[NormalImage], resolution: int) -> None:
    resized = [n for n in normals if n.size != (resolution, resolution)]
    if not resized:
        return
    sizes = sorted({f"{n.size[0]}x{n.size[1]}" for n in resized})
    stretched = sum(n.size[0] != n.size[1] for n in resized)
    logger.warning(
        "%d of %d normal images (%s) are resized to %dx%d%s; the bank records the resized copies in normal/",
        len(resized),
        len(normals),
        ", ".join(sizes[:4]),
        resolution,
        resolution,
        f" ({stretched} not square: stretched, the aspect ratio is not kept)" if stretched else "",
    )
