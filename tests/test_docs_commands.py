"""Every shell command of README.md and docs/**/*.md runs, at tiny size, as the docs write it.

The commands are read from the ```bash blocks (``\\`` continuations joined, ``# comments`` dropped). Each
distinct command either matches a rule of :data:`RULES`, which says how it runs here (the options appended to
make it tiny, the files it needs from an earlier docs command, what it must leave behind), or an entry of
:data:`SKIPS`, which says why it cannot run here. A command that matches neither fails
:func:`test_every_docs_command_has_a_rule_or_a_skip_reason`: a new command in the docs needs a rule.

How the commands run:

* each in its own scratch project folder (``configs`` linked to the checkout's), whose ``../shared/data``
  is a small view of the real ``../shared/data`` (links to 20 normal bottle images, 2 good and 3 defective
  test images per type, 4 DTD textures, the support set and the authors' released files): the docs' paths
  work verbatim, and testing a model takes seconds;
* what a command reads from an earlier command (``runs/bottle/embeddings``, a checkpoint under
  ``results/``, ``weights/resnet18.pth``) is linked from the folder of the first docs command that makes it;
  two docs commands that come to the same arguments and inputs run once;
* options appended to a command override its own (jsonargparse and argparse keep the last value), e.g.
  ``--trainer.max_steps 1`` and widths 8/4 for a 700-epoch DRAEM config;
* placeholders: ``<id-or-path>`` is the built-in ``tiny`` backbone, ``results/.../model.ckpt`` the
  checkpoint that the docs' training makes, optional ``[--option value]`` is run with the option, and
  ``anogen generate ... --resume true`` is the nearest earlier ``anogen generate`` command of its file with
  ``--resume true``;
* ``anomalib`` and ``anogen`` run in processes forked from one that imported their CLIs once
  (:mod:`tests.helpers.cli_server`): fresh processes, without ~15 s of imports each; ``python`` commands run in
  plain fresh processes.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from .helpers.cli import cli_server, run_cli
from .helpers.cli_server import CliServer
from .helpers.data import BOTTLE, DTD, REPO, SHARED, needs_shared_bottle, needs_shared_support

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

DRAEM_CKPT = "results/DraemWeak/MVTecAD/bottle/latest/weights/lightning/model.ckpt"
DRAEM_CONFIG = "results/DraemWeak/MVTecAD/bottle/latest/config.yaml"  # anomalib saves the training's config
DESTSEG_CKPT = "results/Destseg/MVTecAD/bottle/latest/weights/lightning/model.ckpt"
DESTSEG_WEAK_CKPT = "results/DestsegWeak/MVTecAD/bottle/latest/weights/lightning/model.ckpt"
WIDGET = "datasets/widget"  # docs/your-own-product.md: a toy product in anomalib's Folder layout
WIDGET_CKPT = "results/DraemWeak/widget/latest/weights/lightning/model.ckpt"

# What makes a command tiny (appended: later options win).
SMALL_BATCHES = ("--data.train_batch_size", "2", "--data.num_workers", "0")
TRAIN_1_STEP = ("--trainer.max_steps", "1", *SMALL_BATCHES)
DRAEM_8_4 = ("--model.reconstructive_width", "8", "--model.discriminative_width", "4")
DESTSEG_2_STEPS = ("--model.steps", "2", "--model.de_st_steps", "1", *SMALL_BATCHES)  # it sets max_steps
LEARN_2_STEPS = ("--steps", "2", "--progress", "false")
GENERATE_2_IMAGES = ("--max_images", "2", "--progress", "false")
# The built-in tiny backbone's VAE has random weights: its whole-frame decode (--keep_outside false, the docs' and
# the paper's default for a real backbone) is noise outside every box, which the quality gate rejects as leaking
# (docs/quality.md), and a bank rejected whole cannot train. The diffusion banks that docs commands train on are
# made with the decode composited into the box here.
TINY_DIFFUSION_BANK = ("--steps", "2", "--keep_outside", "true")

EVALUATE_TINY = (  # anogen evaluate: 32 px, a U-Net of width 4, 2 steps, the final network only
    *("--image_size", "32", "--width", "4", "--steps", "2", "--batch_size", "4"),
    *("--average_last", "1", "--progress", "false"),
)


@dataclass(frozen=True)
class Rule:
    """How the docs commands that ``pattern`` matches (``re.fullmatch``) run here."""

    pattern: str
    extra: tuple[str, ...] = ()  # appended to the command
    substitute: tuple[tuple[str, str], ...] = ()  # (text, replacement) inside the command's words
    needs: tuple[str, ...] = ()  # paths an earlier docs command makes, linked into the working folder
    copy_needs: bool = False  # copy them instead (the command writes into them)
    files: tuple[tuple[str, str], ...] = ()  # (path here, file of the checkout) copied in first
    makes: tuple[str, ...] = ()  # paths the command must leave; "--output" means the value of that option
    expect: tuple[str, ...] = ()  # text its output must hold
    image_size: int | None = None  # the side that the DraemWeak checkpoint or export it makes resizes to


RULES: tuple[Rule, ...] = (
    # ---- docs/your-own-product.md: a product of one's own, from its toy dataset to an export (before the bottle
    # rules, which would match some of these commands too)
    Rule(r"python -m anomalib_anogen\.data\.toy --output datasets/widget", extra=("--size", "64"), makes=(WIDGET,)),
    Rule(
        r"anogen learn --support datasets/widget/support --backbone tiny --output \S+",
        extra=LEARN_2_STEPS,
        needs=(WIDGET,),
        makes=("--output",),
    ),
    Rule(
        r"anogen generate --normal datasets/widget/normal --embeddings runs/widget/embeddings .*--priors auto .*",
        extra=(*GENERATE_2_IMAGES, *TINY_DIFFUSION_BANK),
        needs=(WIDGET, "runs/widget/embeddings"),
        makes=("--output",),
        expect=("--priors auto: dent: width",),
    ),
    Rule(r"anogen show runs/widget/bank-roi --output \S+", needs=("runs/widget/bank-roi",), makes=("--output",)),
    Rule(
        r"anomalib train --model DraemWeak --model\.generator anogen --model\.bank_dir runs/widget/bank .*"
        r"--data Folder --data\.name widget .*",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        needs=(WIDGET, "runs/widget/bank"),
        makes=(WIDGET_CKPT,),
        expect=("pixel_AUPR",),
        image_size=128,
    ),
    Rule(
        r"anomalib test --model DraemWeak --ckpt_path results/DraemWeak/widget/\S+ "
        r"--data Folder --data\.name widget .*",
        needs=(WIDGET, WIDGET_CKPT),
        expect=("pixel_AUPR",),
    ),
    Rule(
        r"anomalib export --model DraemWeak --ckpt_path results/DraemWeak/widget/\S+ --export_type openvino",
        needs=(WIDGET_CKPT,),
        makes=("results/weights/openvino/model.xml",),
        image_size=128,
    ),
    # ---- anomalib: help and parsing
    Rule(r"anomalib train --model\.help (DraemWeak|Destseg|DestsegWeak)", expect=("--model.dtd_dir",)),
    Rule(
        r"anomalib train --model anomalib_anogen\.models\.DraemWeak \.\.\.",
        substitute=(("...", "--print_config"),),  # the point is the full class path resolving
        expect=("class_path: anomalib_anogen.models.DraemWeak",),
    ),
    # ---- anomalib: training (one step, then anomalib's test on the small view's test images)
    Rule(
        r"anomalib train (--model DraemWeak --model\.generator anogen .*"
        r"|--config configs/draem_weak\.yaml --config configs/anogen_bank\.yaml)",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        needs=("runs/bottle/bank",),
        makes=(DRAEM_CKPT,),
        expect=("pixel_AUPR",),
    ),
    Rule(
        r"anomalib train --config configs/draem_weak_small\.yaml",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        makes=(DRAEM_CKPT,),
        expect=("pixel_AUPR",),
        image_size=128,
    ),
    Rule(
        r"anomalib train --config configs/draem_weak_small\.yaml "
        r"--model\.pre_processor\.init_args\.transform\.init_args\.size \[64, 64\]",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        makes=(DRAEM_CKPT,),
        expect=("pixel_AUPR",),
        image_size=64,
    ),
    Rule(
        r"anomalib train --model DraemWeak --model\.pre_processor PreProcessor .*"
        r"--model\.pre_processor\.transform\.size \[96, 96\] --data .*",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        makes=(DRAEM_CKPT,),
        expect=("pixel_AUPR",),
        image_size=96,
    ),
    Rule(
        r"anomalib train (--model DraemWeak --data .*|--config configs/draem_weak\.yaml)",
        extra=DRAEM_8_4 + TRAIN_1_STEP,
        makes=(DRAEM_CKPT, DRAEM_CONFIG),
        expect=("pixel_AUPR",),
        image_size=256,
    ),
    Rule(
        r"anomalib train --config configs/destseg\.yaml",
        extra=DESTSEG_2_STEPS,
        needs=("weights/resnet18.pth",),
        makes=(DESTSEG_CKPT,),
        expect=("pixel_AUPR",),
    ),
    Rule(
        r"anomalib train (--config configs/destseg_weak\.yaml|--model DestsegWeak .*)",
        extra=DESTSEG_2_STEPS,
        needs=("weights/resnet18.pth",),
        makes=(DESTSEG_WEAK_CKPT,),
        expect=("pixel_AUPR",),
    ),
    # ---- anomalib: test and predict from those checkpoints, without the training's data or widths
    Rule(
        r"anomalib test --model DraemWeak --ckpt_path \S+ --data MVTecAD .*",
        needs=(DRAEM_CKPT,),
        expect=("pixel_AUPR", "Using the checkpoint's"),  # the checkpoint's widths 8/4, not DraemWeak's 128/64
    ),
    Rule(
        r"anomalib test --config results/DraemWeak/MVTecAD/bottle/latest/config\.yaml --ckpt_path \S+",
        needs=(DRAEM_CONFIG, DRAEM_CKPT),
        expect=("pixel_AUPR",),
    ),
    Rule(
        r"anomalib predict --model DraemWeak --ckpt_path \S+ --data \S+",
        needs=(DRAEM_CKPT,),
        makes=("results/DraemWeak/latest/images",),
    ),
    # ---- docs/deploy.md section 8: an FP32 and an INT8 export side by side, and deploy-check on them (before the
    # general export rule below, which would match these too)
    Rule(
        r"anomalib export --model DraemWeak --ckpt_path \S+ --export_type openvino --export_root exports/fp32",
        needs=(DRAEM_CKPT,),
        makes=("exports/fp32", "exports/fp32/weights/openvino/model.xml"),
        image_size=256,
    ),
    Rule(
        r"anomalib export --model DraemWeak --ckpt_path \S+ --export_type openvino --export_root exports/int8 "
        r"--compression_type INT8_PTQ .*",
        needs=(DRAEM_CKPT,),
        makes=("exports/int8", "exports/int8/weights/openvino/model.xml"),
    ),
    Rule(
        r"anogen deploy-check exports --images \S+ --masks \S+",
        extra=("--runs", "1", "--warmup", "0", "--throughput_images", "2", "--progress", "false"),
        needs=("exports/fp32", "exports/int8"),
        copy_needs=True,  # the command writes its choice beside the FP32 IR
        makes=("exports/fp32/weights/openvino/model.deploy.json",),
        expect=("FP32 IR at f32", "INT8 IR at f32", "chosen: ", "wrote "),
    ),
    # ---- anomalib: export of those checkpoints, verbatim: the checkpoint gives the widths (8/4 here, not the
    # configs' 128/64 or 32/16) and the image size (256: the first docs training, whatever the config says)
    Rule(
        r"anomalib export (--model DraemWeak|--config configs/draem_weak(_small)?\.yaml) --ckpt_path \S+ "
        r"--export_type openvino( .*)?",
        substitute=(("results/.../model.ckpt", DRAEM_CKPT),),
        needs=(DRAEM_CKPT,),
        makes=("results/weights/openvino/model.xml",),
        image_size=256,
    ),
    Rule(
        r"anomalib export --model Destseg --ckpt_path \S+ --export_type openvino",
        needs=(DESTSEG_CKPT,),  # and not weights/resnet18.pth: the checkpoint holds the teacher
        makes=("results/weights/openvino/model.xml",),
    ),
    # ---- anogen learn and import-embedding
    Rule(
        r"anogen learn --support \S+ (.* )?--backbone (tiny|<id-or-path>)( .*)?",
        substitute=(("<id-or-path>", "tiny"),),
        extra=LEARN_2_STEPS,
        makes=("--output",),
    ),
    Rule(
        r"anogen import-embedding --input \S+ --category bottle --output \S+",
        needs=("../shared/data/anogen_reference/released_embeddings",),
        makes=("--output",),
    ),
    Rule(r"anogen (learn|generate|evaluate) --help", expect=("--output",)),
    Rule(
        r"anogen learn --config c\.yaml --print_config",
        files=(("c.yaml", "configs/anogen/learn_bottle.yaml"),),
        expect=("steps: 6000",),
    ),
    # ---- anogen generate and show
    Rule(
        r"anogen generate --backend paste .* --resume true",
        extra=GENERATE_2_IMAGES,
        needs=("runs/bottle/bank-paste",),
        copy_needs=True,
        expect=("24 of 24 records already done",),
    ),
    Rule(
        r"anogen generate --backend paste .* --overwrite true",
        extra=GENERATE_2_IMAGES,
        needs=("runs/bottle/bank-paste",),
        copy_needs=True,
        expect=("bank of 24 records",),
    ),
    Rule(r"anogen generate --backend paste .*", extra=GENERATE_2_IMAGES, makes=("--output",)),
    Rule(
        r"anogen generate (--normal \S+ --embeddings runs/bottle/embeddings --output \S+|--config \S+)",
        extra=(*GENERATE_2_IMAGES, *TINY_DIFFUSION_BANK),
        needs=("runs/bottle/embeddings",),
        makes=("runs/bottle/bank",),
    ),
    Rule(r"anogen show runs/bottle/bank --output \S+( .*)?", needs=("runs/bottle/bank",), makes=("--output",)),
    Rule(
        r"anogen show runs/bottle/bank-placed --output \S+",
        needs=("runs/bottle/bank-placed",),
        makes=("--output",),
    ),
    # ---- docs/quality.md: the quality measures, the gate, injected faults
    Rule(r"anogen check runs/bottle/bank-q( .*)?", needs=("runs/bottle/bank-q",), expect=("| defect | records |",)),
    Rule(
        r"python -m anomalib_anogen\.generate\.faults runs/bottle/bank-q runs/bottle/bank-faulty",
        needs=("runs/bottle/bank-q",),
        makes=("runs/bottle/bank-faulty",),
    ),
    Rule(
        r"anogen check runs/bottle/bank-faulty --write true",
        needs=("runs/bottle/bank-faulty",),
        copy_needs=True,  # it writes quality.json into the bank
        makes=("runs/bottle/bank-faulty/quality.json",),
        expect=("rejected; the `anogen` generator skips them",),
    ),
    Rule(r"anogen show runs/bottle/bank-q --worst .*", needs=("runs/bottle/bank-q",), makes=("--output",)),
    # ---- anogen evaluate (docs/evaluate.md): the real test set of the small view, a tiny schedule
    Rule(
        r"anogen evaluate runs/bottle/bank-paste40 --test \.\./shared/data/MVTecAD(/bottle| --category bottle)( .*)? "
        r"--output \S+",
        extra=EVALUATE_TINY,
        needs=("runs/bottle/bank-paste40",),
        makes=("--output",),
        expect=("pixel_AP", "mean"),
    ),
    Rule(r"anogen show runs/bottle/bank-faulty --worst .*", needs=("runs/bottle/bank-faulty",), makes=("--output",)),
    Rule(
        r"python scripts/quality_figure\.py runs/bottle/bank-faulty --output \S+",
        files=(("scripts/quality_figure.py", "scripts/quality_figure.py"),),
        needs=("runs/bottle/bank-faulty",),
        makes=("--output",),
    ),
    # ---- python one-liners
    Rule(
        r"python -c import timm, torch; .*pretrained=True.*",
        substitute=(("pretrained=True", "pretrained=False"),),  # the same file, without the download
        makes=("resnet18.pth",),
    ),
    Rule(r"python -c import openvino as ov; print\(ov\.Core\(\)\.get_property\('CPU', 'INFERENCE_PRECISION_HINT'\)\)"),
    Rule(
        r"python -c from anomalib_anogen\.deploy import cpu_info; print\(cpu_info\(\)\)",
        expect=("OpenVINO default precision",),
    ),
)

SKIPS: tuple[tuple[str, str], ...] = (
    (
        r"pip install \.",
        "installs into the environment: tests/test_install.py builds the wheel, installs it in a "
        "fresh venv and runs anomalib's CLI with it",
    ),
    (r"git clone .*", "a placeholder repository URL, and needs the network"),
    (r"source \.venv/bin/activate", "changes the calling shell only"),
    (
        r"bash scripts/(setup|demo|test)\.sh",
        "CI itself: scripts/test.sh sets up .venv (setup.sh) and runs the suite; demo.sh is setup.sh plus the demo",
    ),
    (
        r"anogen learn --config configs/anogen/learn_bottle\.yaml --backbone models/ldm-text2im-large-256",
        "needs the paper's LDM weights on disk; nothing downloads here (the same learning runs above on tiny)",
    ),
    (
        r"(torchrun --nnodes 2 .*|srun anogen generate .*)",
        "needs two machines sharing a folder: tests/test_multinode.py runs learn and generate under torchrun "
        "with two local nodes and compares them with one process",
    ),
    (r"python benchmarks/bench_\w+\.py --device cuda .*", "GPU only; scripts/test.sh runs the script with --smoke"),
    (
        r"python benchmarks/bench_\w+\.py( .*)?",
        "minutes to an hour at the documented size; scripts/test.sh (CI) "
        "runs every benchmark script with --smoke, which sets its own tiny sizes",
    ),
)

# Where the docs tell the user to put a file that a docs command makes elsewhere.
MOVED = {"weights/resnet18.pth": "resnet18.pth"}  # docs/models/destseg.md, configs/destseg.yaml


@dataclass(frozen=True)
class DocsCommand:
    """One distinct command of the docs and every place it is shown."""

    text: str  # its words joined by single spaces
    words: tuple[str, ...]
    places: tuple[tuple[str, int], ...]  # (docs file relative to the checkout, line)


def shell_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command line) of the ```bash blocks of a markdown file, continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith("```"):
            inside = not inside and line.strip() == "```bash"
            continue
        if not inside:
            continue
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def docs_commands() -> list[DocsCommand]:
    """The distinct commands of README.md and docs/**/*.md, in the order they first appear."""
    found: dict[str, DocsCommand] = {}
    for path in DOCS:
        for number, line in shell_lines(path):
            words = tuple(shlex.split(line, comments=True))
            if not words:
                continue
            text = " ".join(words)
            place = (str(path.relative_to(REPO)), number)
            known = found.get(text)
            found[text] = DocsCommand(text, words, (*known.places, place) if known else (place,))
    return list(found.values())


COMMANDS = docs_commands()


def expanded(command: DocsCommand) -> tuple[str, ...]:
    """The command with ``...`` standing for an earlier command of its file expanded, optional [...] kept."""
    words, optional = [], False
    for word in command.words:  # `[--cell 128]`: run with the option
        optional = optional or word.startswith("[--")
        words.append(word.removeprefix("[").removesuffix("]") if optional else word)
        optional = optional and not word.endswith("]")
    if words[:3] == ["anogen", "generate", "..."]:
        file = command.places[0][0]
        earlier = [
            c
            for c in COMMANDS
            if c.places[0][0] == file
            and c.words[:2] == ("anogen", "generate")
            and "..." not in c.words
            and c.places[0][1] < command.places[0][1]
        ]
        assert earlier, f"{command.text}: no earlier `anogen generate` command in {file} for `...`"
        words = [*earlier[-1].words, *words[3:]]
    return tuple(words)


def rule_of(command: DocsCommand) -> Rule | None:
    """The first rule that matches the (expanded) command."""
    text = " ".join(expanded(command))
    return next((rule for rule in RULES if re.fullmatch(rule.pattern, text)), None)


def skip_of(command: DocsCommand) -> str | None:
    """The reason the command cannot run here, if it is on the skip list."""
    return next((reason for pattern, reason in SKIPS if re.fullmatch(pattern, command.text)), None)


def where(command: DocsCommand) -> str:
    return ", ".join(f"{file}:{line}" for file, line in command.places)


def test_docs_have_commands_and_the_extraction_joins_continuations_and_drops_comments() -> None:
    texts = {c.text for c in COMMANDS}
    # README: a comment after the command, and a command continued over two lines
    assert "pip install ." in texts
    assert (
        "anogen generate --normal ../shared/data/MVTecAD/bottle/train/good --embeddings runs/bottle/embeddings "
        "--output runs/bottle/bank" in texts
    )
    assert not [t for t in texts if "#" in t or "\\" in t]
    assert len(COMMANDS) > 30


def test_every_docs_command_has_a_rule_or_a_skip_reason() -> None:
    uncovered = [f"{c.text}   ({where(c)})" for c in COMMANDS if rule_of(c) is None and skip_of(c) is None]
    both = [f"{c.text}   ({where(c)})" for c in COMMANDS if rule_of(c) is not None and skip_of(c) is not None]
    assert not uncovered, "docs commands with no rule in RULES and no reason in SKIPS:\n" + "\n".join(uncovered)
    assert not both, "docs commands both run and skipped:\n" + "\n".join(both)


def test_every_rule_and_skip_is_used() -> None:
    """A rule or a skip that no docs command matches any more is stale: delete it."""
    used_rules = {rule_of(c) for c in COMMANDS}
    stale = [rule.pattern for rule in RULES if rule not in used_rules]
    stale += [pattern for pattern, _ in SKIPS if not any(re.fullmatch(pattern, c.text) for c in COMMANDS)]
    assert not stale, "rules or skips that match no docs command:\n" + "\n".join(stale)


# ------------------------------------------------------------------------------------------------------------
# Running them


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


def make_shared_view(data: Path) -> None:
    """A small ``shared/data``: copies of a few real files of each part that the docs use.

    Copies, not links: anomalib's ``MVTecAD`` refuses images whose real path lies outside its root.
    """
    bottle = data / "MVTecAD" / "bottle"
    for image in sorted((BOTTLE / "train" / "good").glob("*.png"))[:20]:
        copy(image, bottle / "train" / "good" / image.name)
    for folder in sorted((BOTTLE / "test").iterdir()):
        for image in sorted(folder.glob("*.png"))[: 2 if folder.name == "good" else 3]:
            copy(image, bottle / "test" / folder.name / image.name)
            if folder.name != "good":
                mask = f"{image.stem}_mask.png"
                copy(BOTTLE / "ground_truth" / folder.name / mask, bottle / "ground_truth" / folder.name / mask)
    for texture in sorted(DTD.rglob("*.jpg"))[:4]:
        copy(texture, data / "dtd" / "images" / texture.relative_to(DTD))
    for part in ("support", "anogen_reference"):
        if (SHARED / part).is_dir():
            (data / part).symlink_to(SHARED.resolve() / part)


@dataclass(frozen=True)
class Run:
    """A docs command as it ran: its rule, working folder and result."""

    rule: Rule
    argv: tuple[str, ...]
    cwd: Path
    result: CompletedProcess


def argv_of(command: DocsCommand, rule: Rule) -> tuple[str, ...]:
    """What runs: the expanded command with the rule's substitutions, then the rule's extra options."""
    words = expanded(command)
    for text, replacement in rule.substitute:
        words = tuple(word.replace(text, replacement) for word in words)
    return (*words, *rule.extra)


def made_by(rule: Rule, argv: tuple[str, ...]) -> list[str]:
    """The paths the rule says a command makes, ``--output`` read from its arguments."""
    return [argv[argv.index(path) + 1] if path.startswith("--") else path for path in rule.makes]


def maker_of(path: str) -> DocsCommand:
    """The first docs command that makes ``path`` (or the file the docs tell the user to move there)."""
    wanted = MOVED.get(path, path)
    makers = [c for c in COMMANDS if (rule := rule_of(c)) and wanted in made_by(rule, argv_of(c, rule))]
    assert makers, f"{path}: no docs command with a rule makes it"
    return makers[0]


class Workspace:
    """Runs docs commands in their own scratch project folders, what they need first.

    Two docs commands that come to the same arguments with the same inputs (``results/.../model.ckpt``
    once it is resolved) run once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[tuple, Run] = {}
        make_shared_view(root / "shared" / "data")

    def close(self) -> None:
        """Nothing to end: the CLI server is the suite's (:func:`cli_server`)."""

    def run(self, command: DocsCommand) -> Run:
        rule = rule_of(command)
        assert rule is not None, command.text
        argv = argv_of(command, rule)
        inputs = {}
        for path in rule.needs:
            if path.startswith("../shared/"):
                if not (self.root / "shared" / path.removeprefix("../shared/")).exists():
                    pytest.skip(f"{path} is not in ../shared/data beside the checkout")
                continue
            maker = maker_of(path)
            made = self.run(maker)
            assert made.result.returncode == 0, f"`{command.text}` needs {path} from `{maker.text}`, which failed"
            inputs[path] = made.cwd / MOVED.get(path, path)
        key = (argv, tuple(sorted(inputs.items())))
        if key not in self.runs:
            self.runs[key] = self._run(rule, argv, inputs)
        return self.runs[key]

    def _run(self, rule: Rule, argv: tuple[str, ...], inputs: dict[str, Path]) -> Run:
        cwd = self.root / f"run{len(self.runs):02d}"
        cwd.mkdir()
        (cwd / "configs").symlink_to(REPO / "configs")
        for path, source in rule.files:
            (cwd / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, cwd / path)
        for path, source in inputs.items():
            (cwd / path).parent.mkdir(parents=True, exist_ok=True)
            if rule.copy_needs:
                shutil.copytree(source, cwd / path, symlinks=True)
            else:
                (cwd / path).symlink_to(source.resolve())
        if argv[0] in CliServer.commands:
            result = cli_server().run(list(argv), cwd, cwd.parent / f"{cwd.name}.log")
        else:
            result = run_cli(list(argv), cwd)
        return Run(rule, argv, cwd, result)


def image_size(model: Path) -> list[int]:
    """The size that a DraemWeak checkpoint's pre-processor (as anomalib restores it), or an export, resizes to."""
    if model.suffix == ".xml":
        import openvino

        first_resize = next(
            op for op in openvino.Core().read_model(model).get_ordered_ops() if op.get_type_name() == "Interpolate"
        )
        return [dimension.get_length() for dimension in first_resize.get_output_partial_shape(0)[2:]]
    from anomalib.data.transforms.utils import extract_transforms_by_type
    from torchvision.transforms.v2 import Resize

    from anomalib_anogen.models import DraemWeak

    transform = DraemWeak.load_from_checkpoint(model, map_location="cpu").pre_processor.transform
    (resize,) = extract_transforms_by_type(transform, Resize)
    return list(resize.size)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    if not DTD.is_dir():
        pytest.skip(f"DTD textures not found at {DTD}")
    space = Workspace(tmp_path_factory.mktemp("docs"))
    yield space
    space.close()


RUNNABLE = [c for c in COMMANDS if rule_of(c) is not None]


@pytest.mark.slow
@needs_shared_bottle()
@needs_shared_support()
@pytest.mark.parametrize("command", RUNNABLE, ids=[c.text for c in RUNNABLE])
def test_docs_command_runs(command: DocsCommand, workspace: Workspace) -> None:
    run = workspace.run(command)
    output = run.result.stdout + run.result.stderr
    ran = f"`{command.text}` ({where(command)}), run as `{' '.join(run.argv)}` in {run.cwd}"
    assert run.result.returncode == 0, f"{ran} exited {run.result.returncode}:\n{output[-6000:]}"
    for path in made_by(run.rule, run.argv):
        assert (run.cwd / path).exists(), f"{ran} did not make {path}:\n{output[-3000:]}"
    for text in run.rule.expect:
        assert text in output, f"{ran} did not print {text!r}:\n{output[-3000:]}"
    if run.rule.image_size is not None:
        for path in made_by(run.rule, run.argv):
            if not path.endswith((".ckpt", ".xml")):
                continue
            assert image_size(run.cwd / path) == [run.rule.image_size] * 2, f"{ran}: {path} is not at that size"
