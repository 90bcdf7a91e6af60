"""`fleet history`, `fleet rollback`, `fleet status`: which version each robot runs, who moved it, and why.

The records are written by every alias move (train -> @candidate, promote -> @production, adapt ->
@robot-<id>) into the MLflow registry (see deploy/history.py); these commands read them and move an alias
back through them. `fleet history --verify` checks every record's signature against METAFLEET_HISTORY_KEY;
`fleet rollback` verifies the version it restores as `fleet pull` would, before the alias moves. Each runs
through ``metafleet.registry_errors.registry_command`` (bounded waits; registry failures exit 2).
"""

from __future__ import annotations

import json
import re
import shlex
import sys

from metafleet.args import EXIT_FAILED, EXIT_OK, bad_input, error
from metafleet.registry_errors import registry_command, server_failure


def add_parsers(sub) -> None:
    """Add the history, rollback, status subcommands to an argparse subparsers object."""
    history = sub.add_parser("history", help="every recorded alias move of a model: who, when, why (gate figures)")
    history.add_argument("model", help="registered model name, e.g. reach-maml or reach-maml-adapted")
    which = history.add_mutually_exclusive_group()
    which.add_argument("--robot", metavar="ID", help="only the moves of @robot-ID")
    which.add_argument("--alias", help="only the moves of this alias, e.g. production")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.add_argument("--verify", action="store_true",
                         help="check every record's signature against METAFLEET_HISTORY_KEY; exit 1 naming each "
                              "forged, unsigned or invalid entry")
    history.set_defaults(handler=registry_command(cmd_history))

    rollback = sub.add_parser("rollback", help="move a robot's alias back to its previous version that passed its "
                                               "gate")
    rollback.add_argument("model", help="registered model holding the alias, e.g. reach-maml-adapted")
    which = rollback.add_mutually_exclusive_group(required=True)
    which.add_argument("--robot", metavar="ID", help="roll back @robot-ID")
    which.add_argument("--alias", help="roll back another alias, e.g. production")
    rollback.add_argument("--reason", default="", help="why (recorded in the history)")
    rollback.add_argument("--json", action="store_true", help="print JSON")
    rollback.set_defaults(handler=registry_command(cmd_rollback))

    status = sub.add_parser("status", help="the fleet: each alias and robot, its version, parent, gain, last move")
    status.add_argument("models", nargs="*", metavar="MODEL",
                        help="registered models (each with its -adapted model); default: all")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=registry_command(cmd_status))


def _client():
    from deploy.registry import Registry

    return Registry().client


def _alias(args) -> str | None:
    from deploy.history import robot_alias

    return robot_alias(args.robot) if args.robot else args.alias


def _warn(problems: list[str]) -> None:
    for line in problems:
        print(f"fleet: warning: {line}", file=sys.stderr)


def cmd_history(args) -> int:
    from deploy.history import adapted_hint, alias_holder, read_history
    from deploy.history_record import KEY_ENV, history_key

    alias = _alias(args)
    if args.verify and history_key() is None:
        return bad_input(f"--verify needs the history key: set {KEY_ENV} to the key the registry's writers sign with")
    client = _client()
    records, problems = read_history(client, args.model, alias)
    if alias and not records and alias_holder(client, args.model, alias) is None:
        return bad_input(f"models:/{args.model}@{alias} is not set and has no recorded moves"
                         + adapted_hint(client, args.model, alias))
    _warn(problems)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    else:
        print_history(args.model, alias, records)
    if not args.verify:
        return EXIT_OK
    if problems:
        tags = [m[1] for line in problems if (m := re.search(r"tag '([^']+)'", line))]
        return error(f"models:/{args.model}: {len(problems)} history entr{'y' if len(problems) == 1 else 'ies'} "
                     f"not signed with {KEY_ENV} (forged, unsigned or invalid): {', '.join(tags)}", EXIT_FAILED)
    print(f"verified: {len(records)} records signed with {KEY_ENV}, no entry forged")
    return EXIT_OK


def print_history(model: str, alias: str | None, records: list) -> None:
    scope = f"@{alias}" if alias else "all aliases"
    if not records:
        print(f"models:/{model} ({scope}): no recorded alias moves")
        return
    print(f"models:/{model} ({scope}): {len(records)} recorded alias move{'s' * (len(records) != 1)}, oldest first")
    for r in records:
        verdict = {True: "passed", False: "not passed", None: "no gate"}[r.passed]
        start = f"v{r.from_version}" if r.from_version else "(unset)"
        print(f"#{r.seq:<3} {r.when}  @{r.alias}: {start} -> v{r.to_version}  by {r.who}@{r.host}  "
              f"[{r.gate}: {verdict}]")
        print(f"     why: {r.reason}")
        if r.figures:
            print(f"     figures: {figures_text(r.figures)}")
        if r.command:
            print(f"     command: {r.command}")


def figures_text(figures: dict) -> str:
    def one(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if value is None or isinstance(value, bool) else str(value)

    return " ".join(f"{k}={one(v)}" for k, v in sorted(figures.items()))


def cmd_rollback(args) -> int:
    from deploy.history import HistoryError, HistoryWriteError, rollback
    from deploy.registry import Registry

    alias = _alias(args)
    command = shlex.join(["fleet", "rollback", args.model, *(["--robot", args.robot] if args.robot else
                                                              ["--alias", args.alias]),
                          *(["--reason", args.reason] if args.reason else [])])
    registry = Registry()
    try:
        move, restored = rollback(registry.client, args.model, alias, args.reason, command,
                                  verify=lambda version: verify_version(registry, args.model, alias, version))
    except HistoryError as exc:
        return bad_input(str(exc))
    except HistoryWriteError as exc:
        return error(f"rollback of models:/{args.model}@{alias} failed: {exc}", EXIT_FAILED)
    if args.json:
        print(json.dumps({"move": move.to_dict(), "restored": restored.to_dict()}, indent=2))
        return EXIT_OK
    print(f"models:/{args.model}@{alias}: v{move.from_version} -> v{move.to_version} (rolled back)")
    print(f"  v{restored.to_version} passed its {restored.gate} gate {restored.when} (by {restored.who}): "
          f"{restored.reason}")
    if restored.figures:
        print(f"  figures: {figures_text(restored.figures)}")
    print(f"robots pick it up with: fleet pull models:/{args.model}@{alias} --out DIR")
    return EXIT_OK


def verify_version(registry, model: str, alias: str, version: str) -> None:
    """Verify ``models:/model/version`` as `fleet pull` does (download, content digest against the manifest and
    the version's tags); HistoryError naming it if it does not verify, the alias unmoved."""
    import tempfile
    from pathlib import Path

    from deploy.history import HistoryError
    from deploy.registry import RegistryError
    from policy.artifact import ArtifactError, PolicyArtifact

    uri = f"models:/{model}/{version}"
    try:
        resolved = registry.resolve(uri)
        with tempfile.TemporaryDirectory(prefix="metafleet-rollback-") as tmp:
            PolicyArtifact.load(registry.download(resolved, Path(tmp) / "download"), expected_digest=resolved.sha256,
                                expected_weights_sha256=resolved.weights_sha256)
    except (RegistryError, ArtifactError, OSError) as exc:
        failure = server_failure(exc)
        if failure is not None:
            raise failure from None
        raise HistoryError(f"rollback refused, models:/{model}@{alias} unchanged: {uri} does not verify as "
                           f"`fleet pull` would verify it: {exc}") from None


def cmd_status(args) -> int:
    from deploy.history import fleet_models, fleet_status

    client = _client()
    models = fleet_models(client, args.models)
    rows = with_live_figures(client, fleet_status(client, models), models if args.models else None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no aliases set" + (f" on {', '.join(models)}" if models else " (no registered models)"))
        return EXIT_OK
    header = ("MODEL", "ALIAS", "ROBOT", "VERSION", "PARENT", "GAIN", "EPISODES/1H", "SUCCESS", "RETURN",
              "INTERVENTIONS", "LAST SEEN (UTC)", "MOVED (UTC)", "BY", "WHY")
    table = [header] + [(r["model"], f"@{r['alias']}" if r["alias"] else "-", r["robot"] or "-", f"v{r['version']}",
                         r["parent"] or "-", "-" if r["gain"] is None else f"{r['gain']:+.3f}",
                         *_live_cells(r.get("live")), r["moved"] or ("unrecorded" if r["alias"] else "-"),
                         r["by"] or "-",
                         (f"[v{r['pending']} recorded, alias not moved: run that command again] "
                          if r["pending"] else "") + (r["why"] or ("moved outside fleet history" if r["alias"]
                                                                   else "reports telemetry, no robot alias")))
                        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def with_live_figures(client, rows: list[dict], models: list[str] | None) -> list[dict]:
    """Each robot row gains ``live``: what that robot reported for that version (``deploy.telemetry``); robots
    that report a model's version without a robot alias on it get a row of their own (``alias`` None)."""
    from deploy.telemetry import robot_figures

    try:
        figures = robot_figures(client, models)
    except Exception as exc:  # telemetry is extra: the alias table still prints
        print(f"fleet: warning: no live figures: {str(exc).splitlines()[0] if str(exc) else exc!r}", file=sys.stderr)
        figures = []
    by_key = {(f["model"], f["robot"], f["version"]): f for f in figures}
    out = []
    for row in rows:
        live = by_key.pop((row["model"], row["robot"], row["version"]), None) if row["robot"] else None
        out.append({**row, "live": live})
    for f in by_key.values():
        out.append({"model": f["model"], "alias": None, "robot": f["robot"], "version": f["version"], "parent": None,
                    "gain": None, "return_before": None, "return_after": None, "recorded": False, "moved": None,
                    "by": None, "why": None, "gate": None, "pending": None, "live": f})
    return out


def _live_cells(live: dict | None) -> tuple[str, ...]:
    if not live:
        return ("-",) * 5

    def pm(mean, se):
        return "-" if mean is None else f"{mean:.3f}" + ("" if se is None else f" ± {se:.3f}")

    return (str(live["episodes_1h"]), pm(live["success"], live["success_stderr"]),
            pm(live["return"], live["return_stderr"]), str(live["interventions"]), live["last_seen"] or "-")
