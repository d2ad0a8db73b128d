"""What produced an artefact: code version, library versions, inputs.

Every stored artefact carries this so that a number found on the store can be traced back
to the code and inputs that made it, and cache keys change when the science changes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from massive_activations import __version__

_LIBRARIES = (
    "torch", "transformers", "huggingface_hub", "safetensors", "tokenizers", "pyarrow",
    "fsspec", "s3fs", "numpy", "scipy", "scikit-learn",
)


@cache
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@cache
def git_commit() -> str | None:
    """The checkout's commit, with '+dirty' when it has uncommitted changes; None for an installed package
    (whose site-packages may lie inside some other repository) and outside git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


@cache
def module_version(*modules: str) -> str:
    """Hash of the source of library modules, so a cache key changes exactly when their code does."""
    digest = hashlib.sha256(__version__.encode())
    for name in sorted(modules):
        module = importlib.import_module(name)
        digest.update(name.encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


# The distribution's packages: checked out or installed, the same files give the same code hash.
CODE_PACKAGES = ("massive_activations", "flows", "tasks", "deployments")


@cache
def code_hash() -> str:
    """Hash of every source file of the project's packages, wherever they are installed: the code that ran,
    when there is no git checkout to name it (an installed wheel)."""
    digest = hashlib.sha256(__version__.encode())
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                digest.update(f"{package}/{path.relative_to(root).as_posix()}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stable_hash(value: Any) -> str:
    """Content hash of JSON-able inputs; key order does not matter."""
    payload = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def thread_settings() -> dict[str, Any]:
    """The compute threads this process runs with (torch's intra- and inter-op pools, when torch is
    loaded, the BLAS and OpenMP pools threadpoolctl sees, when it is, and the variables BLAS and
    tokenizers read): timings and float rounding depend on them."""
    out: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    torch = sys.modules.get("torch")
    if torch is not None:
        out |= {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}
    if "threadpoolctl" in sys.modules:
        for pool in sys.modules["threadpoolctl"].threadpool_info():
            out[f"{pool['user_api']}:{pool['internal_api']}"] = pool["num_threads"]
    return out


def provenance(inputs: dict[str, Any], code_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "code_hash": code_hash(),
        "code_version": module_version(*code_modules) if code_modules else __version__,
        "code_modules": list(code_modules),
        "libraries": library_versions(),
        "threads": thread_settings(),
        "inputs": inputs,
    }
