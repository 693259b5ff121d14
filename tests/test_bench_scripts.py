"""Every benchmark runs as a file (python bench/x.py) from any folder, not only as a module (python -m bench.x)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")

# Runs each script as `python bench/<script>.py --help` would: the script's folder first on sys.path,
# the repository nowhere on it, and none of the project's modules imported yet. One process for all of
# them, because most of each run is importing torch and transformers, which stay imported between scripts.
AS_FILES = """
import contextlib, io, json, runpy, sys
results, rest = {}, sys.path[1:]
for path in sys.argv[1:]:
    sys.path[:] = [path.rsplit("/", 1)[0]] + rest
    for name in [m for m in sys.modules if m.split(".")[0] in ("lib", "bench")]:
        del sys.modules[name]
    sys.argv = [path, "--help"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
        except Exception as error:
            code = 1
            err.write(f"{type(error).__name__}: {error}")
    results[path] = (code, out.getvalue(), err.getvalue())
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helped(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Exit status, stdout and stderr of every script's `--help`, run from a folder outside the repository."""
    paths = [str(ROOT / "bench" / f"{script}.py") for script in SCRIPTS]
    done = subprocess.run([sys.executable, "-c", AS_FILES, *paths], cwd=tmp_path_factory.mktemp("elsewhere"),
                          capture_output=True, text=True, timeout=300, check=True)
    results = json.loads(done.stdout.splitlines()[-1])
    return {Path(path).stem: result for path, result in results.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts_as_a_file_from_any_folder(script, helped):
    code, stdout, stderr = helped[script]
    assert code == 0, stderr.strip().splitlines()[-1:]
    assert "usage:" in stdout
