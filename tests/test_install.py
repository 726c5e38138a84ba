"""A regular (non-editable) wheel install registers the models with anomalib's CLI too."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .helpers.data import REPO


@pytest.mark.slow  # builds the wheel and installs it into a fresh virtual environment
def test_wheel_install_resolves_short_name_in_anomalib_cli(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheel_dir, REPO],
        check=True,
    )
    (wheel,) = wheel_dir.glob("anomalib_anogen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "anomalib_anogen_autoload.pth" in names
    assert "anomalib_anogen/_autoload.py" in names

    # A fresh environment holding only the wheel; its dependencies come from this test environment.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], check=True
    )
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import sys; sys.argv = ['anomalib', 'train', '--model.help', 'DraemWeak']\n"
        "from anomalib.cli.cli import main\n"
        "import anomalib_anogen; print('plugin at', anomalib_anogen.__file__)\n"
        "main()\n"
    )
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"plugin at {site}" in result.stdout
    assert "--model.p_cutoff" in result.stdout
