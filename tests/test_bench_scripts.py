"""Every benchmark runs both as a file (python bench/x.py) and as a module (python -m bench.x)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module")
def helped(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """`python bench/<script>.py --help` from a folder outside the repository, for every script at once:
    most of each run is importing torch and transformers, so started together they overlap."""
    folder = tmp_path_factory.mktemp("elsewhere")
    started = {script: subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--help"], cwd=folder,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for script in SCRIPTS}
    done = {}
    try:
        for script, process in started.items():
            stdout, stderr = process.communicate(timeout=300)
            done[script] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:  # a hung script fails the tests without leaving the others running
        for process in started.values():
            process.kill()
    return done


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts_as_a_file_from_any_folder(script, helped):
    done = helped[script]
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert "usage:" in done.stdout
