"""Learned anomaly embeddings on disk: diffusers' textual-inversion format plus a metadata json.

Per defect: ``<output>/<defect>/learned_embeds.safetensors`` holding ``{token: float32 [1, dim]}`` (what
diffusers' ``load_textual_inversion(path, token=...)`` reads) and ``<output>/<defect>/anogen_embedding.json``
(backbone, hyper-parameters, support files, losses). A defect folder is written under a temporary name and
renamed into place, so a folder named after a defect is always complete.

Also here: the safe import of the authors' released ``embeddings.pt`` files, which are pickles. They are
read with ``torch.load(weights_only=True)`` and an allow-list of two classes, never ``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anomalib_anogen.generation.errors import AnogenInputError

logger = logging.getLogger(__name__)

EMBEDDING_FILE = "learned_embeds.safetensors"
METADATA_FILE = "anogen_embedding.json"
METADATA_FORMAT = "anogen-embedding/1"
RELEASED_BACKBONE = "CompVis/ldm-text2im-large-256"  # txt2img-f8-large in diffusers' LDMTextToImagePipeline format
RELEASED_DIM = 1280


@dataclass
class Embedding:
    """One learned token: its name, vector ``[n, dim]`` and metadata (empty for foreign files)."""

    token: str
    vector: torch.Tensor
    metadata: dict[str, Any]
    path: Path


def is_finished(folder: Path) -> bool:
    """True when ``folder`` holds a complete embedding (the file that makes it usable)."""
    return (folder / EMBEDDING_FILE).is_file()


def check_output(output: Path, defects: list[str], overwrite: bool) -> None:
    """Refuse (before any work) to replace finished embeddings or unrelated folders unless ``overwrite``."""
    if output.exists() and not output.is_dir():
        raise AnogenInputError(f"{output}: --output exists and is not a folder")
    for defect in defects:
        folder = output / defect
        if not folder.exists() or overwrite:
            continue
        if is_finished(folder):
            raise AnogenInputError(
                f"{folder / EMBEDDING_FILE}: a finished embedding already exists; pass --overwrite to replace it"
            )
        raise AnogenInputError(f"{folder}: exists and is not an anogen embedding; remove it or pass --overwrite")


def write_embedding_dir(
    output: Path, defect: str, token: str, vector: torch.Tensor, metadata: dict[str, Any], overwrite: bool
) -> Path:
    """Write one defect's embedding atomically: temporary folder, then rename; returns the final folder."""
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    final = output / defect
    temporary = output / f".{defect}.tmp-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        tensor = vector.detach().to("cpu", torch.float32).reshape(-1, vector.shape[-1]).contiguous()
        save_file({token: tensor}, str(temporary / EMBEDDING_FILE), metadata={"format": "pt"})
        metadata = {**metadata, "embedding_sha256": _sha256(temporary / EMBEDDING_FILE)}
        (temporary / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
        if final.exists():
            if not overwrite:
                raise AnogenInputError(f"{final}: appeared while learning; pass --overwrite to replace it")
            old = output / f".{defect}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            os.replace(temporary, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_embedding(path: str | Path) -> Embedding:
    """Read a defect folder or a ``learned_embeds.safetensors`` file (one token) with its metadata if any."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / EMBEDDING_FILE if path.is_dir() else path
    if not file.is_file():
        raise AnogenInputError(f"{file}: embedding file not found")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise AnogenInputError(f"{file}: not a safetensors embedding ({error})") from error
    if len(tensors) != 1:
        raise AnogenInputError(f"{file}: expected exactly one token, found {sorted(tensors)}")
    token, vector = next(iter(tensors.items()))
    meta_file = file.parent / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return Embedding(token=token, vector=vector.reshape(-1, vector.shape[-1]), metadata=metadata, path=file)


def apply_embedding(backbone: Any, embedding: Embedding, token: str | None = None) -> list[int]:
    """Add ``embedding`` to ``backbone``'s tokenizer and token table (for generation); returns the token ids.

    A token that the vocabulary already holds (the released files' ``*``) has its row overwritten, as the
    authors' LDM code did; a new token gets new rows appended to the table.
    """
    from torch import nn

    token = token or embedding.token
    vector = embedding.vector
    table = backbone.token_embedding()
    if vector.shape[-1] != table.weight.shape[1]:
        raise AnogenInputError(
            f"{embedding.path}: embedding width {vector.shape[-1]} does not fit backbone {backbone.spec!r} "
            f"(token width {table.weight.shape[1]})"
        )
    names = [token] if len(vector) == 1 else [token] + [f"{token}_{i}" for i in range(1, len(vector))]
    vocab = backbone.tokenizer.get_vocab()
    new = [name for name in names if name not in vocab]
    if new:
        backbone.tokenizer.add_tokens(new)
    ids = [int(backbone.tokenizer.convert_tokens_to_ids(name)) for name in names]
    if max(ids) >= table.num_embeddings:
        grown = nn.Embedding(max(ids) + 1, table.weight.shape[1], device=table.weight.device, dtype=table.weight.dtype)
        grown.weight.data[: table.num_embeddings] = table.weight.data
        grown.requires_grad_(False)
        backbone.set_token_embedding(grown)
        backbone.text_encoder.config.vocab_size = grown.num_embeddings
        table = grown
    with torch.no_grad():
        for row, token_id in enumerate(ids):
            table.weight[token_id] = vector[row].to(table.weight.device, table.weight.dtype)
    return ids


# ----------------------------------------------------------------------------------------------------------------
# The authors' released embeddings


def load_released(path: str | Path) -> tuple[str, torch.Tensor, int]:
    """Safely read one released ``.pt``: ``(token, vector [n, 1280], original token id)``.

    Only ``torch.nn.ParameterDict`` and ``torch.nn.Parameter`` are allowed beyond plain tensors and
    containers; any other object in the pickle, or any other structure, is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise AnogenInputError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals([torch.nn.ParameterDict, torch.nn.Parameter]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling refused"
        raise AnogenInputError(f"{path}: refused, it holds objects outside the allow-list ({first})") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise AnogenInputError(f"{path}: not a readable torch file ({error})") from error
    if not isinstance(data, dict) or set(data) != {"string_to_token", "string_to_param"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise AnogenInputError(
            f"{path}: refused, expected exactly {{'string_to_token', 'string_to_param'}}, found {keys}"
        )
    params = data["string_to_param"]
    if isinstance(params, torch.nn.ParameterDict):
        # Unpickled without __init__, a ParameterDict's keys live only in its _parameters dict.
        state = vars(params)
        if state.get("_buffers") or state.get("_modules"):
            raise AnogenInputError(f"{path}: refused, string_to_param holds buffers or modules")
        params = dict(state.get("_parameters") or {})
    tokens = data["string_to_token"]
    if not isinstance(params, dict) or not isinstance(tokens, dict) or len(params) != 1 or set(params) != set(tokens):
        raise AnogenInputError(f"{path}: refused, expected one placeholder in string_to_param and string_to_token")
    token, vector = next(iter(params.items()))
    token_id = tokens[token]
    if not isinstance(token, str) or not isinstance(vector, torch.Tensor) or not torch.is_floating_point(vector):
        raise AnogenInputError(f"{path}: refused, the placeholder is not a string mapped to a float tensor")
    if not isinstance(token_id, torch.Tensor | int) or (isinstance(token_id, torch.Tensor) and token_id.numel() != 1):
        raise AnogenInputError(f"{path}: refused, string_to_token must map the placeholder to one token id")
    vector = vector.detach().float().reshape(-1, vector.shape[-1]).clone()
    if vector.shape[-1] != RELEASED_DIM:
        raise AnogenInputError(
            f"{path}: embedding width {vector.shape[-1]}, expected {RELEASED_DIM} (txt2img-f8-large)"
        )
    return token, vector, int(token_id)


def released_inputs(inputs: list[str], category: str | None) -> list[Path]:
    """The ``.pt`` files named by ``inputs`` (files or folders), filtered to ``<category>_*.pt`` if given."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = f"{category}_*.pt" if category else "*.pt"
            found = sorted(path.glob(pattern))
            if not found:
                raise AnogenInputError(f"{path}: no {pattern} files found")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise AnogenInputError(f"{path}: not found")
    return files


def released_defect_name(path: Path, category: str | None) -> str:
    """``bottle_broken_large.pt`` -> ``broken_large`` when ``category`` is ``bottle``, else the file stem."""
    stem = path.stem
    if category and stem.startswith(category + "_"):
        return stem[len(category) + 1 :]
    return stem
