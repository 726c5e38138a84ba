"""anomalib's stock CLI resolves the plugin's models, in fresh processes as a user runs it."""

import subprocess
import sys
from pathlib import Path

from .helpers.cli import run_cli

TINY = ["--model.reconstructive_width", "8", "--model.discriminative_width", "4"]


def test_plugin_hook_imports_neither_torch_nor_anomalib() -> None:
    code = (
        "import sys; "
        "assert any(type(f).__name__ == 'AnomalibCliFinder' for f in sys.meta_path), sys.meta_path; "
        "heavy = sorted(m for m in ('torch', 'anomalib', 'anomalib_anogen.models') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_p_cutoff_fails_with_the_argument_named(tmp_path: Path) -> None:
    result = run_cli(
        ["anomalib", "fit", "--model", "DraemWeak", "--model.p_cutoff", "1.5", "--data", "MVTecAD"], cwd=tmp_path
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and len(output.splitlines()) < 15, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: p_cutoff must be a number in [0, 1), got 1.5. It is the anomaly probability below which in-box "
        "pixels of a box-masked sample get no segmentation loss; the paper uses 0.1."
    ], output


def test_cross_argument_error_is_one_line_and_other_errors_keep_the_traceback(tmp_path: Path) -> None:
    bad = run_cli(
        ["anomalib", "fit", "--model", "Destseg", "--model.steps", "10", "--model.de_st_steps", "20"], cwd=tmp_path
    )
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "Traceback" not in output and len(output.splitlines()) < 15, output
    assert "error: de_st_steps (20) must be smaller than steps (10)" in output
    # Not the plugin's input error: anomalib's traceback as before (here: no training data at all).
    other = run_cli(["anomalib", "fit", "--model", "DraemWeak", *TINY], cwd=tmp_path)
    assert other.returncode != 0
    assert "Traceback" in other.stdout + other.stderr
