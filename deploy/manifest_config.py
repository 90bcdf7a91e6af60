"""The run config of a registered policy, rebuilt from its manifest without importing anything it names.

`fleet eval`, `fleet promote` and `fleet adapt` need the policy's fleet (family, robots, horizon) to build
environments. A manifest is data from the registry: a ``module:object`` plugin family in it would be
imported (working directory on ``sys.path``) and instantiated by config validation. So plugin families are
resolved only from what the user names on the command line (``--allow-plugin module:object``, or the
``fleet.family`` of their own ``--config FILE``); any other plugin in a manifest is refused before
anything is imported. A curriculum hook is dropped: it weights training-task sampling, which evaluation
and adaptation never do.

Usage::

    cfg = manifest_config(artifact.manifest, "models:/nav/3", allow=["my_pkg.tasks:Nav"])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from learner.config import Config, ConfigError, load_config
from policy.artifact import ArtifactError


class UntrustedPlugin(ArtifactError):
    """A manifest names code (a plugin family) the user did not allow: nothing was imported."""


def plugin_references(family) -> list[str]:
    """The ``module:object`` names in a ``fleet.family`` value (a name, or a mapping name -> weight)."""
    names = [family] if isinstance(family, str) else list(family) if isinstance(family, dict) else []
    return sorted(name for name in names if isinstance(name, str) and ":" in name)


def config_plugins(path: str | None) -> set[str]:
    """The plugin families a user's own config file names (read as data: nothing is imported here)."""
    if path is None:
        return set()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --config {path!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path!r} is not valid YAML: {exc}") from None
    fleet = data.get("fleet") if isinstance(data, dict) else None
    return set(plugin_references(fleet.get("family"))) if isinstance(fleet, dict) else set()


def check_plugins(manifest: dict, uri: str, allow: Iterable[str] = (), config_path: str | None = None) -> None:
    """Raise :class:`UntrustedPlugin` unless every plugin family the manifest names is allowed by the user,
    and every ``--allow-plugin`` matches one the manifest names (a typo must not pass silently)."""
    fleet = manifest.get("fleet")
    named = plugin_references(fleet.get("family") if isinstance(fleet, dict) else None)
    explicit = set(allow)
    stray = sorted(explicit - set(named))
    if stray:
        raise UntrustedPlugin(f"--allow-plugin {stray[0]!r} is not a plugin family of {uri} (its manifest names "
                              f"{', '.join(named) or 'no plugin'}); allow exactly the manifest's plugin")
    allowed = explicit | config_plugins(config_path)
    refused = [name for name in named if name not in allowed]
    if refused:
        raise UntrustedPlugin(f"{uri} names plugin task family {refused[0]!r} in its manifest; code named by a "
                              f"registered policy is never imported unless you allow it: pass --allow-plugin "
                              f"{refused[0]} (or --config FILE whose fleet.family names it)")


def run_config_plugins(data: dict) -> list[str]:
    """The code a run config names: the ``module:object`` families of ``fleet.family`` and ``fleet.curriculum``."""
    fleet = data.get("fleet") if isinstance(data, dict) else None
    if not isinstance(fleet, dict):
        return []
    curriculum = fleet.get("curriculum")
    return sorted({*plugin_references(fleet.get("family")), *([curriculum] if isinstance(curriculum, str) else [])})


def check_run_plugins(stored: dict, resumed: dict, run_id: str, allow: Iterable[str] = ()) -> None:
    """Raise :class:`UntrustedPlugin` unless every plugin (family or curriculum) that the config stored in run
    ``run_id`` names, and the ``resumed`` config (the stored one with the user's ``--set``) still uses, is allowed
    by ``--allow-plugin``; an ``--allow-plugin`` the stored config does not name is refused too."""
    named, explicit = run_config_plugins(stored), set(allow)
    stray = sorted(explicit - set(named))
    if stray:
        raise UntrustedPlugin(f"--allow-plugin {stray[0]!r} is not a plugin of run {run_id}'s stored config (it names "
                              f"{', '.join(named) or 'no plugin'}); allow exactly the run's plugin")
    refused = [name for name in run_config_plugins(resumed) if name in named and name not in explicit]
    if refused:
        raise UntrustedPlugin(f"run {run_id}'s stored config names plugin {refused[0]!r} (fleet.family or "
                              "fleet.curriculum); `fleet train --resume` never imports code named by a stored config "
                              f"unless you allow it: pass --allow-plugin {refused[0]} (or give your own CONFIG)")


def manifest_config(manifest: dict, uri: str, allow: Iterable[str] = (), config_path: str | None = None,
                    **sections: dict) -> Config:
    """The validated config of ``manifest["fleet"]`` and ``manifest["learner"]`` (device cpu) plus ``sections``,
    after :func:`check_plugins`; an invalid fleet or learner section is an :class:`ArtifactError`."""
    check_plugins(manifest, uri, allow, config_path)
    fleet, learner = manifest.get("fleet"), manifest.get("learner")
    if not isinstance(fleet, dict) or not isinstance(learner, dict):
        raise ArtifactError(f"{uri}: the manifest has no 'fleet' and 'learner' sections to evaluate or adapt with")
    fleet = {k: v for k, v in fleet.items() if k != "curriculum"}  # never imported: see the module docstring
    try:
        return load_config(data={"fleet": fleet, "learner": {**learner, "device": "cpu"}, **sections})
    except ConfigError as exc:
        raise ArtifactError(f"{uri}: the manifest's config is invalid: {exc}") from None
