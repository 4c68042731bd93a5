"""Benchmarks that feed the README write what they print to benchmarks/results/<name>.md, headed
by the command that made it, the date, the machine and the commit, so every figure quoted
in the README can be traced to a file and rerun.

    with recorded("bench_encode"):
        ...print the tables...
"""
from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator

RESULTS = Path(__file__).resolve().parent / "results"


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def recorded(name: str, argv: list[str] | None = None) -> Iterator[None]:
    """Tee stdout into benchmarks/results/<name>.md (written when the block ends without error)."""
    buf = io.StringIO()
    real = sys.stdout
    sys.stdout = _Tee(real, buf)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = real
    args = sys.argv[1:] if argv is None else argv
    script = os.path.relpath(sys.argv[0], Path(__file__).resolve().parents[1]) if sys.argv[0] else name
    head = (f"# {name}\n\n"
            f"Command: `python {shlex.join([script, *args])}`  \n"
            f"Measured: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {_cpu()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; commit {_commit()}\n\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(head + buf.getvalue())
    print(f"(written to {RESULTS / f'{name}.md'})", file=sys.stderr)
