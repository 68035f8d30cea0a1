"""Where the project's data files are: ``templates/`` and ``shim/``.

In a wheel they are installed under ``k8s_sql/_data/``; in a source checkout (editable
install, tests) they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory of the data folder ``name`` ("templates" or "shim").

    Raises:
        FileNotFoundError: neither the installed nor the checkout copy exists.
    """
    for candidate in (_PKG / "_data" / name, _PKG.parent.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} not found next to {_PKG}")


def template_path(*parts: str) -> Path:
    """Path of one file under ``templates/``, e.g. ``template_path("kubeadm", "v1beta4.yaml")``."""
    return data_dir("templates").joinpath(*parts)
