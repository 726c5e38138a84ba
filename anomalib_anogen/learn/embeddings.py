"""Learned anomaly embeddings on disk: diffusers' textual-inversion format plus a metadata json.

Per defect: ``<output>/<defect>/learned_embeds.safetensors`` holding ``{token: float32 [1, dim]}`` (what
diffusers' ``load_textual_inversion(path, token=...)`` reads) and ``<output>/<defect>/anogen_embedding.json``
(backbone, hyper-parameters, support files, losses). A defect folder is written under a temporary name and
renamed into place, so a folder named after a defect is always complete.

Also here: the safe import of the authors' released ``embeddings.pt`` files, which are pickles. They are
read with ``torch.load(weights_only=True)`` and an allow-list of two classes, never ``weights_only=False``.
"""

from __future__ import annotations

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

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import check_writable_folder, sha256_bytes, sha256_file, write_all, write_fault
from anomalib_anogen.core.torch_files import not_a_torch_file, read_failure, refused_global

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
    """True when ``folder`` holds a complete embedding (the file that makes it usable).

    A hidden folder is never one: ``.<defect>.tmp-*`` is an embedding being written (or left by a killed run).
    """
    return not folder.name.startswith(".") and (folder / EMBEDDING_FILE).is_file()


def check_embeddings_output(
    output: Path, defects: list[str], overwrite: bool, keep_finished: bool = False
) -> list[str]:
    """Check ``output`` before any work; returns the defects whose finished embedding stays (not ``overwrite``).

    Refused: an ``output`` that cannot be written (a file in the way, no permission, a read-only file system),
    a defect folder that is not an embedding unless ``overwrite``, and a finished embedding unless
    ``overwrite`` or ``keep_finished`` (``anogen learn`` keeps finished defects and learns the others).
    """
    check_writable_folder(output, "--output")
    finished = []
    for defect in defects:
        folder = output / defect
        if not folder.exists() or overwrite:
            continue
        if is_finished(folder):
            if keep_finished:
                finished.append(defect)
                continue
            msg = f"{folder / EMBEDDING_FILE}: a finished embedding already exists; pass --overwrite to replace it"
            raise AnogenInputError(msg)
        msg = f"{folder}: exists and is not an anogen embedding; remove it or pass --overwrite"
        raise AnogenInputError(msg)
    return finished


def write_embedding_dir(
    output: Path,
    defect: str,
    token: str,
    vector: torch.Tensor,
    metadata: dict[str, Any],
    overwrite: bool,
    again: str = "run the same command again",
) -> Path:
    """Write one defect's embedding atomically: temporary folder, then rename; returns the final folder.

    A write that the machine refuses (a full disk) leaves no part of it and raises :class:`AnogenFaultError`
    naming the file and ``again``, how to go on.
    """
    from safetensors.torch import save

    final = output / defect
    temporary = output / f".{defect}.tmp-{uuid.uuid4().hex[:8]}"
    tensor = vector.detach().to("cpu", torch.float32).reshape(-1, vector.shape[-1]).contiguous()
    data = save({token: tensor}, metadata={"format": "pt"})  # the bytes of safetensors' save_file
    file = temporary / EMBEDDING_FILE
    try:
        output.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
        _write_new(file, data)
        metadata = {**metadata, "embedding_sha256": sha256_bytes(data)}
        file = temporary / METADATA_FILE
        _write_new(file, (json.dumps(metadata, indent=2, sort_keys=False) + "\n").encode())
        if final.exists():
            if not overwrite:
                msg = f"{final}: appeared while learning; pass --overwrite to replace it"
                raise AnogenInputError(msg)
            old = output / f".{defect}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            os.replace(temporary, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        what = f"the embedding of {defect} (nothing of it was kept)"
        raise write_fault(final / file.name, what, error, again) from error
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (in a fresh temporary folder) and write ``data`` into it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        write_all(descriptor, data)
    finally:
        os.close(descriptor)


def _require_finite(path: Path, vector: torch.Tensor, fix: str) -> None:
    """Refuse an embedding with NaN or Inf values: it would turn every generated defect into noise or black."""
    bad = int((~torch.isfinite(vector)).sum())
    if bad:
        msg = f"{path}: the embedding holds {bad} NaN/Inf value(s) of {vector.numel()}; {fix}"
        raise AnogenInputError(msg)


def _read_metadata(meta_file: Path) -> dict[str, Any]:
    if not meta_file.is_file():
        return {}
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        msg = f"{meta_file}: unreadable metadata ({error})"
        raise AnogenInputError(msg) from error
    if not isinstance(metadata, dict):
        msg = f"{meta_file}: unreadable metadata (a JSON {type(metadata).__name__}, not an object)"
        raise AnogenInputError(msg)
    return metadata


def load_embedding(path: str | Path) -> Embedding:
    """Read a defect folder or a ``learned_embeds.safetensors`` file (one token) with its metadata if any.

    Checked on every read: the file's sha256 against the ``embedding_sha256`` its metadata recorded (anogen's
    own metadata must record one), and that every value is finite.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / EMBEDDING_FILE if path.is_dir() else path
    if not file.is_file():
        msg = f"{file}: embedding file not found"
        raise AnogenInputError(msg)
    meta_file = file.parent / METADATA_FILE
    metadata = _read_metadata(meta_file)
    expected = metadata.get("embedding_sha256")
    if expected is None and metadata.get("format") == METADATA_FORMAT:
        msg = f"{meta_file}: records no embedding_sha256, so {file.name} cannot be checked"
        raise AnogenInputError(msg)
    if expected is not None:
        actual = sha256_file(file)
        if actual != expected:
            msg = (
                f"{file}: sha256 {actual} differs from embedding_sha256 {expected} in {meta_file.name}; "
                "the file changed after it was written, learn or import it again"
            )
            raise AnogenInputError(msg)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        msg = f"{file}: not a safetensors embedding ({error})"
        raise AnogenInputError(msg) from error
    if len(tensors) != 1:
        msg = f"{file}: expected exactly one token, found {sorted(tensors)}"
        raise AnogenInputError(msg)
    token, vector = next(iter(tensors.items()))
    _require_finite(file, vector, "it is unusable, learn or import it again")
    return Embedding(token=token, vector=vector.reshape(-1, vector.shape[-1]), metadata=metadata, path=file)


def apply_embedding(backbone: Any, embedding: Embedding, token: str | None = None) -> list[int]:
    """Add ``embedding`` to ``backbone``'s tokenizer and token table (for generation); returns the token ids.

    A token that the vocabulary already holds (the released files' ``*``) has its row overwritten, as the
    authors' LDM code did; a new token gets new rows appended to the table.
    """
    token = token or embedding.token
    vector = embedding.vector
    table = backbone.token_embedding()
    if vector.shape[-1] != table.weight.shape[1]:
        msg = (
            f"{embedding.path}: embedding width {vector.shape[-1]} does not fit backbone {backbone.spec!r} "
            f"(token width {table.weight.shape[1]})"
        )
        raise AnogenInputError(msg)
    names = [token] if len(vector) == 1 else [token] + [f"{token}_{i}" for i in range(1, len(vector))]
    vocab = backbone.tokenizer.get_vocab()
    new = [name for name in names if name not in vocab]
    if new:
        backbone.tokenizer.add_tokens(new)
    ids = [int(backbone.tokenizer.convert_tokens_to_ids(name)) for name in names]
    if max(ids) >= table.num_embeddings:
        # transformers keeps the old rows and the config's vocab_size; the new rows' random start (overwritten
        # below) must not move the global RNG.
        with torch.random.fork_rng(devices=[]):
            backbone.text_encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        table = backbone.token_embedding()
        table.requires_grad_(False)
    with torch.no_grad():
        for row, token_id in enumerate(ids):
            table.weight[token_id] = vector[row].to(table.weight.device, table.weight.dtype)
    return ids


# ----------------------------------------------------------------------------------------------------------------
# The authors' released embeddings


_ALLOWED = "tensors, torch.nn.Parameter, torch.nn.ParameterDict and plain containers"
_EXPECTED = "a released AnoGen embedding (a dict of exactly string_to_token and string_to_param)"


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        return f"a dict with keys {sorted(map(str, data))}"
    if isinstance(data, torch.Tensor):
        return f"a tensor of shape {list(data.shape)}"
    return f"a {type(data).__name__}"


def load_released(path: str | Path) -> tuple[str, torch.Tensor, int]:
    """Safely read one released ``.pt``: ``(token, vector [n, 1280], original token id)``.

    Only ``torch.nn.ParameterDict`` and ``torch.nn.Parameter`` are allowed beyond plain tensors and
    containers; any other object in the pickle, or any other structure, is refused. A file that is not a
    ``torch.save`` file at all is refused before it is unpickled, with what it looks like.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: file not found"
        raise AnogenInputError(msg)
    not_torch = not_a_torch_file(path)
    if not_torch:
        msg = f"{path}: not a torch file ({not_torch}); expected {_EXPECTED}"
        raise AnogenInputError(msg)
    try:
        with torch.serialization.safe_globals([torch.nn.ParameterDict, torch.nn.Parameter]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message suggests loading without the allow-list; only the refused class is passed on.
        found = refused_global(error)
        what = f"an object of class {found}" if found else "pickle instructions"
        msg = f"{path}: refused, a torch file holding {what} outside the allow-list ({_ALLOWED}); nothing in it was run"
        raise AnogenInputError(msg) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        detail = read_failure(error)
        msg = f"{path}: a torch file that cannot be read, damaged or truncated{f' ({detail})' if detail else ''}"
        raise AnogenInputError(msg) from error
    if not isinstance(data, dict) or set(data) != {"string_to_token", "string_to_param"}:
        msg = f"{path}: refused, a torch file holding {_describe(data)}; expected {_EXPECTED}"
        raise AnogenInputError(msg)
    params = data["string_to_param"]
    if isinstance(params, torch.nn.ParameterDict):
        # Unpickled without __init__, a ParameterDict's keys live only in its _parameters dict.
        state = vars(params)
        if state.get("_buffers") or state.get("_modules"):
            msg = f"{path}: refused, string_to_param holds buffers or modules"
            raise AnogenInputError(msg)
        params = dict(state.get("_parameters") or {})
    tokens = data["string_to_token"]
    if not isinstance(params, dict) or not isinstance(tokens, dict) or len(params) != 1 or set(params) != set(tokens):
        msg = f"{path}: refused, expected one placeholder in string_to_param and string_to_token"
        raise AnogenInputError(msg)
    token, vector = next(iter(params.items()))
    token_id = tokens[token]
    if not isinstance(token, str) or not isinstance(vector, torch.Tensor) or not torch.is_floating_point(vector):
        msg = f"{path}: refused, the placeholder is not a string mapped to a float tensor"
        raise AnogenInputError(msg)
    if not isinstance(token_id, torch.Tensor | int) or (isinstance(token_id, torch.Tensor) and token_id.numel() != 1):
        msg = f"{path}: refused, string_to_token must map the placeholder to one token id"
        raise AnogenInputError(msg)
    vector = vector.detach().float().reshape(-1, vector.shape[-1]).clone()
    if vector.shape[-1] != RELEASED_DIM:
        msg = f"{path}: embedding width {vector.shape[-1]}, expected {RELEASED_DIM} (txt2img-f8-large)"
        raise AnogenInputError(msg)
    _require_finite(path, vector, "refused, this file is damaged")
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
                msg = f"{path}: no {pattern} files found"
                raise AnogenInputError(msg)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            msg = f"{path}: not found"
            raise AnogenInputError(msg)
    return files


def released_defect_name(path: Path, category: str | None) -> str:
    """``bottle_broken_large.pt`` -> ``broken_large`` when ``category`` is ``bottle``, else the file stem."""
    stem = path.stem
    if category and stem.startswith(category + "_"):
        return stem[len(category) + 1 :]
    return stem
