"""Our sibling packages (`policy`, `fleet`, `workers`, `learner`, `deploy`) resolve to this installation, whatever
sits in the working directory.

The names are generic and the working directory comes first on the path in two places: `python -m metafleet`
(Python puts the working directory first) and every Ray worker of a driver started from it (Ray adds the driver's
working directory to its workers' paths, ahead of the installed packages). A folder there named like one of ours -
a pulled policy in `./policy` has no `__init__.py`, so it is a namespace package - then wins the import under an
editable install, whose finder runs after the path's: `cannot import name 'PolicyWeights' from 'policy' (unknown
location)`. :func:`pin_packages` puts a finder first that resolves each name to its package beside this one (lazily):
`metafleet/__init__.py` runs it in the driver, and `workers.ray_connect.init_ray` names it as the worker setup hook
of the private local Ray (`WORKER_SETUP_HOOK`).
Chosen over moving the packages under one namespace (`metafleet.policy`, ...), which would rename every import in
the project and in users' plugins; the repository keeps its top-level layout.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGES = ("policy", "fleet", "workers", "learner", "deploy")
ROOT = Path(__file__).resolve().parent.parent


class OurPackages(importlib.abc.MetaPathFinder):
    """Finds PACKAGES (the top-level names only: their submodules follow from the package's own path) in ROOT,
    ahead of the path's finders. Lazy: nothing is imported until something asks for it."""

    def find_spec(self, fullname, path=None, target=None):
        init = ROOT / fullname / "__init__.py"
        if fullname not in PACKAGES or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(ROOT / fullname)])


def pin_packages() -> None:
    """Put :class:`OurPackages` first on `sys.meta_path` (once); a package already imported is left as it is."""
    if not any(isinstance(f, OurPackages) for f in sys.meta_path):
        sys.meta_path.insert(0, OurPackages())
