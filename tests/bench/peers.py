"""The peers' and the profiler's virtualenvs, under /tmp, never in .venv or requirements files.

Each is made once with the interpreter .venv was made from, `pip install`s pinned versions, and
is kept in /tmp/tickd-bench-venvs/ for the next run (`rm -rf /tmp/tickd-bench-venvs` removes
them); only data folders are temporary per run. The recorders run from a copy in the part's
temporary folder, with PYTHONPATH emptied, so nothing of the repository is importable to them.
The card's leanest stack (`lean_recorder.py`) is the exception: it runs on .venv's interpreter,
so that its gevent and websocket-client are the store's own, as requirements.txt pins them.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from common import BENCH, say

VENVS = Path("/tmp/tickd-bench-venvs")
PINS = {
    "naive": ["websockets==17.4"],
    "cryptofeed": ["cryptofeed==2.4.1"],  # the newest that installs on Python 3.11 here
    "pyspy": ["py-spy==0.4.3"],
}


def venv(name: str) -> Path:
    """The virtualenv `name` (made and filled on first use); returns its folder."""
    folder = VENVS / name
    if not (folder / ".installed").exists():
        say(f"installing {' '.join(PINS[name])} into {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([base, "-m", "venv", folder], check=True)
        subprocess.run(
            [folder / "bin" / "pip", "install", "-q", "--disable-pip-version-check", *PINS[name]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (folder / ".installed").touch()
    return folder


def python(name: str) -> Path:
    if name == "lean":
        return Path(sys.executable)  # .venv: the store's own gevent and websocket-client
    return venv(name) / "bin" / "python"


def recorder(name: str, folder: Path) -> Path:
    """A copy of the recorder script `name` in `folder`, to run from there."""
    target = folder / f"{name}.py"
    shutil.copyfile(BENCH / f"{name}.py", target)
    return target


def version(name: str, package: str) -> str:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    out = subprocess.run(
        [python(name), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def py_spy(pid: int, seconds: float, folder: Path) -> str:
    """py-spy's raw record (collapsed stacks, one line per stack) of `pid` for `seconds`.

    --nonblocking: the process is never paused, so its timing is untouched."""
    out = folder / "py-spy.txt"
    spy = venv("pyspy") / "bin" / "py-spy"
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    subprocess.run(
        [*argv, "--nonblocking", "--format", "raw", "--output", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_text()
