"""``--num_nodes``: two "machines" started by ``torchrun`` on this one give the single-process result.

Each node is one ``torchrun --nnodes 2 --node_rank R`` agent with one CPU process, as on two machines sharing a
folder; ranks meet over TCP on localhost (gloo). Toy data, the paste backend and the tiny backbone: no shared
data, no weights.
"""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_anogen.cli import main as cli_main

from .helpers.cli import error_line
from .helpers.data import all_files

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_two_nodes(args: list[str], cwd: Path) -> None:
    """``anogen ARGS --num_nodes 2`` on two torchrun nodes of one CPU process each; both must succeed."""
    port = str(free_port())
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", port]
    nodes = [
        subprocess.Popen(
            [*launch, "--node_rank", str(rank), "-m", "anomalib_anogen.cli", *args, "--num_nodes", "2"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    for rank, (node, log) in enumerate(zip(nodes, logs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{log[-3000:]}"
    assert "rank 1" in logs[1] or "GLOBAL_RANK: 1" in logs[1], logs[1][-2000:]


def test_two_nodes_make_the_single_process_bank(toy_inputs: dict[str, str], tmp_path: Path) -> None:
    args = ["generate", "--backend", "paste", "--support", toy_inputs["support"], "--normal", toy_inputs["normal"]]
    args += ["--priors", toy_inputs["priors"], "--max_images", "3", "--per_image", "2", "--progress", "false"]
    assert cli_main([*args, "--output", str(tmp_path / "one")]) == 0
    on_two_nodes([*args, "--output", str(tmp_path / "two")], tmp_path)
    assert all_files(tmp_path / "two") == all_files(tmp_path / "one")


def test_two_nodes_learn_the_single_process_embeddings(toy_inputs: dict[str, str], tmp_path: Path) -> None:
    args = ["learn", "--support", toy_inputs["support"], "--backbone", "tiny", "--steps", "3", "--resolution", "32"]
    args += ["--progress", "false"]
    assert cli_main([*args, "--output", str(tmp_path / "one")]) == 0
    on_two_nodes([*args, "--output", str(tmp_path / "two")], tmp_path)
    one, two = all_files(tmp_path / "one"), all_files(tmp_path / "two")
    assert one.keys() == two.keys()
    weights = [name for name in one if name.endswith(".safetensors")]
    assert len(weights) == 3
    assert all(one[name] == two[name] for name in weights)


@pytest.mark.parametrize("command", ["generate", "learn"])
def test_several_nodes_without_a_launcher_fail_at_once(
    command: str, toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    """Started on its own, the run would wait for a second node forever; it ends with the fix instead."""
    output = tmp_path / "out"
    if command == "generate":
        args = ["generate", "--backend", "paste", "--support", toy_inputs["support"], "--normal", toy_inputs["normal"]]
    else:
        args = ["learn", "--support", toy_inputs["support"], "--backbone", "tiny"]
    line = error_line([*args, "--output", str(output), "--num_nodes", "2"], capsys, command)
    assert "--num_nodes 2: start the command on every node with a launcher (torchrun --nnodes 2" in line
    assert not output.exists()
