"""What a plain `pip install .` (not editable) of a clone holds: the version, and the batch scripts that
`python -m fedmpi.sweep --slurm` submits (they live in the package; jobs/ in a clone links to them)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_install_has_the_version_and_the_batch_scripts(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, timeout=300, capture_output=True)
    run = {"cwd": tmp_path, "env": {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, "capture_output": True,
           "text": True, "timeout": 60}
    version = subprocess.run([sys.executable, "-m", "fedmpi", "--version"], **run)
    assert version.returncode == 0, version.stderr
    expected = re.search(r'__version__ = "(.+)"', (ROOT / "fedmpi" / "__init__.py").read_text())[1]
    assert version.stdout.strip() == f"fedmpi {expected}"
    found = subprocess.run([sys.executable, "-c", "import fedmpi, fedmpi.sweep as s; print(fedmpi.__file__); "
                            "print(s.SBATCH_SCRIPT); print(s.SBATCH_SCRIPT.read_text().splitlines()[0])"], **run)
    module, script, first_line = found.stdout.splitlines()
    assert Path(module).is_relative_to(target) and Path(script).is_relative_to(target), found.stdout
    assert first_line.startswith("#!"), first_line
    assert sorted(p.name for p in (target / "fedmpi" / "jobs").iterdir()) == \
        sorted(p.name for p in (ROOT / "jobs").iterdir())
