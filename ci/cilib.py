"""Shared helpers of the Python ci/ scripts: the ntd cache directory and Debian packages.

Both rules live once, in ci/lib.sh (`ntd_cache_dir`, `ensure_packages`); this module runs them
there, so the bash scripts, the Python scripts and the Rust tests cannot drift apart.

    sys.path.insert(0, "<repo>/ci")   # unless the script lives in ci/ itself
    import cilib
    cilib.cache_dir()                 # Path of ${NTD_CACHE_DIR:-…/ntd}
    cilib.ensure_tool("qemu-img", "qemu-utils")
    cilib.python_packages(test_dir)   # a test's python-packages.txt, pip-installed once
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CI_DIR = Path(__file__).resolve().parent
REPO_DIR = CI_DIR.parent
LIB_SH = CI_DIR / "lib.sh"


def _lib(function: str, *args: str, capture: bool = False) -> str:
    """Run FUNCTION of ci/lib.sh with ARGS; its stdout when CAPTURE (else sent to stderr)."""
    proc = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$0"; {function} "$@"', str(LIB_SH), *args],
        stdout=subprocess.PIPE if capture else sys.stderr, text=True)
    if proc.returncode != 0:
        sys.exit(f"ci: {function} {' '.join(args)} failed (exit status {proc.returncode})")
    return proc.stdout if capture else ""


def cache_dir() -> Path:
    """The ntd cache root (guests, debs, virtualenvs, mypy's cache); not created here."""
    return Path(_lib("ntd_cache_dir", capture=True).strip())


def ensure_packages(*packages: str) -> None:
    """Install the Debian PACKAGES that are missing (as root, else through sudo)."""
    _lib("ensure_packages", *packages)


def ensure_tool(tool: str, package: str) -> str:
    """Absolute path of TOOL on PATH, installing the Debian PACKAGE that ships it if missing."""
    path = shutil.which(tool)
    if path is None:
        ensure_packages(package)
        path = shutil.which(tool)
    if path is None:
        sys.exit(f"ci: {tool} is still missing after installing {package}")
    return path


def python_packages(test_dir: str | os.PathLike[str]) -> str | None:
    """Install TEST_DIR/python-packages.txt (pip requirement lines, like a NixOS test's
    extraPythonPackages) into a cached target directory; its path, or None without the file."""
    req = os.path.join(test_dir, "python-packages.txt")
    if not os.path.exists(req):
        return None
    with open(req, "rb") as f:
        text = f.read()
    key = hashlib.sha256(text + sys.version.encode()).hexdigest()[:16]
    cache = cache_dir()
    target = os.path.join(cache, f"python-{key}")
    if os.path.isdir(target):
        return target
    os.makedirs(cache, exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"ci: installing python packages of {req}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "--no-input", "--target", tmp, "-r", req],
                   check=True, stdout=sys.stderr)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a parallel run installed the same set
    return target
