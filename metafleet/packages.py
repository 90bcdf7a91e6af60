"""Our sibling packages (`policy`, `fleet`, `workers`, `learner`, `deploy`) resolve to this installation, whatever
sits in the working directory.

The names are generic and the working directory comes first on the path in two places: `python -m metafleet`
(Python puts the working directory first) and every Ray worker of a driver started from it (Ray adds the driver's
working directory to its workers' paths, ahead of the installed packages). A folder there named like one of ours -
a pulled policy in `./policy` has no `__init__.py`, so it is a namespace package - then wins the import under an
editable install, whose finder runs after the path's: `cannot import name 'PolicyWeights' from 'policy' (unknown
location)`. :func:`pin_packages` binds each name to its package beside this one, before anything imports it:
`metafleet/__init__.py` runs it in the driver, and `workers.ray_connect.init_ray` names it as the worker setup hook
of the private local Ray (`WORKER_SETUP_HOOK`). A package that already resolved to a regular package is left as is.
Chosen over moving the packages under one namespace (`metafleet.policy`, ...), which would rename every import in
the project and in users' plugins; the repository keeps its top-level layout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES = ("policy", "fleet", "workers", "learner", "deploy")  # dependency order: each imports only earlier ones
ROOT = Path(__file__).resolve().parent.parent


def pin_packages() -> list[str]:
    """Load each of PACKAGES from ROOT unless it is already a regular package; the names it (re)bound."""
    bound = []
    for name in PACKAGES:
        module = sys.modules.get(name)
        init = ROOT / name / "__init__.py"
        if (module is not None and getattr(module, "__file__", None)) or not init.is_file():
            continue  # already a regular package (ours, as the installation resolved it), or not installed here
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(ROOT / name)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        bound.append(name)
    return bound
