"""Install the project into the venv whose Python runs this script: ``make`` calls it once per pyproject change.

uv (from PyPI, installed into the venv first) installs exactly what pip would, honouring pip's own configuration
(index, extra indexes, find-links and constraints from pip.conf and PIP_* variables), but unpacks and byte-compiles
on every core: a clean clone's venv takes ~35 s instead of pip's ~100 s (BENCHMARKS.md). Where uv cannot be
installed or fails, pip does the install, then byte-compiles on every core.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ".[test]"
PY = sys.executable


def pip_config() -> dict[str, list[str]]:
    """pip's effective settings (files and PIP_* variables), as ``pip config list`` prints them."""
    out = subprocess.run([PY, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key.rsplit(".", 1)[-1], []).extend(value.strip().strip("'\"").split())
    return found


def uv_args(config: dict[str, list[str]]) -> list[str]:
    """The uv options that say what pip's configuration says (pip takes the best match over all indexes)."""
    args = ["--index-strategy", "unsafe-best-match"]
    for key, flag in (("index-url", "--index-url"), ("extra-index-url", "--extra-index-url"),
                      ("find-links", "--find-links"), ("constraint", "--constraint")):
        for value in dict.fromkeys(config.get(key, [])):
            args += [flag, value]
    return args


def with_uv() -> bool:
    uv = Path(PY).parent / "uv"
    quiet = ["-q", "--disable-pip-version-check"]
    if subprocess.run([PY, "-m", "pip", "install", *quiet, "uv"]).returncode != 0:
        return False
    cmd = [str(uv), "pip", "install", "-q", "--python", PY, "--compile-bytecode", *uv_args(pip_config()), "-e", TARGET]
    return subprocess.run(cmd, cwd=ROOT).returncode == 0


def with_pip() -> None:
    subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "-e", TARGET],
                   cwd=ROOT, check=True)
    # a few files of some packages are not Python 3 and never compile: pip skips them too
    subprocess.run([PY, "-m", "compileall", "-q", "-j", "0", str(Path(PY).parents[1] / "lib")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    if os.environ.get("UNET_DIST_INSTALLER") == "pip" or not with_uv():
        print("installing with pip", file=sys.stderr)
        with_pip()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
