"""Regenerate every measured table in the docs from the raw benchmark JSON under ``results/``.

A table lives between two marker comments in a doc; everything outside the markers is hand-written::

    <!-- report:throughput -->
    ...generated table, and a "Source:" line naming the JSON file, command, commit, machine, load and date...
    <!-- /report:throughput -->

    python benchmarks/report.py            # rewrite the blocks in place
    python benchmarks/report.py --check    # exit 1 with a diff when a doc differs from what the JSON gives
    python benchmarks/report.py --plot docs/img/learning-curves.png   # the learning-curve figure (matplotlib)

Only the standard library is used: the check runs in CI without torch, Ray or pybullet, and keeps working
while the benchmark scripts' own imports move.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks import learning_report, robot_exams_report, sweep_report  # noqa: E402  (stdlib only too)

DOCS = ("docs/results.md", "benchmarks/README.md", "docs/reliability.md")
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)


class ReportError(Exception):
    """A marker names no table, or a table's JSON is missing or malformed."""


# ------------------------------------------------------------------------------------ helpers
def mean_stderr(values: list[float]) -> str:
    """`mean ± stderr` (sample std / sqrt(n), as learner.evaluation.stderr)."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {se:.2f}"


def source_line(rel: str, data: dict) -> str:
    """One line naming where the table came from; `rel` is the JSON's path relative to the repository."""
    p = data.get("provenance")
    if not p:
        raise ReportError(f"{rel}: no `provenance` block; rerun the benchmark that writes it")
    m = p["machine"]
    device = f", CUDA {m['cuda_device']}" if m.get("cuda_device") else ""
    return (f"Source: `{rel}` — `{p['command']}`, commit `{p['commit']}`, {p['date']}; {m['cpu_count']} cores "
            f"({m['cpu_model']}){device}, Python {m['python']}, torch {m['torch']}, Ray {m['ray']}; "
            f"load average {p['load_average_start'][0]:.2f} at start, {p['load_average_end'][0]:.2f} at end.")


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """Markdown table lines; `align` is one character per column (l or r)."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)]


# ----------------------------------------------------------------------------------- renderers
def render_throughput(data: dict) -> list[str]:
    cfg, ref = data["config"], data["reference"]
    rows = []
    for m in data["modes"].values():
        same = {None: "(reference)", True: "yes", False: "NO"}[m["identical_to_plain"]]
        rows.append([m["label"], str(m["cores"]), f"{m['mean']:,.0f}", f"{m['min']:,.0f}", f"{m['max']:,.0f}",
                     " / ".join(f"{v:,.0f}" for v in m["steps_per_s"]), f"{m['vs_plain']:.2f}",
                     f"{m['per_core_used']:.2f}", same])
    lines = [f"{cfg['requests']} requests x {cfg['envs']} episodes x {cfg['horizon']} steps per call, "
             f"{cfg['repeats']} timed calls per mode, interleaved.", ""]
    lines += table(["mode", "cores used", "env-steps/s mean", "min", "max", "each call", "vs plain", "per core used",
                    "same batches"], rows, "lrrrrrrrl")
    steal = data["machine"].get("cpu_steal_percent")
    lines += ["", "Single-core references in the same run: raw `stepSimulation` "
              f"{ref['raw_step_simulation_per_s']:,.0f}/s (KUKA + plane, one client, no commands); `env.step` alone "
              f"{ref['env_step_zero_action_per_s']:,.0f}/s "
              f"with zero actions, {ref['env_step_random_action_per_s']:,.0f}/s with N(0, 1) actions"
              + (f"; machine-wide CPU steal {steal:.0f} %, busy {data['machine']['cpu_busy_percent']:.0f} % "
                 "over the run." if steal is not None else ".")]
    return lines


def render_envs(data: dict) -> list[str]:
    modes = any("action_mode" in r for r in data["rows"])  # files written before envs.py recorded it lack it
    rows = [[r["family"], r["robot"], *([r.get("action_mode", "–")] if modes else []), str(r["substeps"]),
             f"{r['env_steps_per_s']:,.0f}", f"{r['unguarded_steps_per_s']:,.0f}", f"{r['raw_steps_per_s']:,.0f}",
             f"{r['ratio']:.2f}", f"{r['physics_ratio']:.2f}"] for r in data["rows"]]
    header = ["family", "robot", *(["action"] if modes else []), "substeps", "env steps/s", "without guard",
              "raw stepSimulation/s", "ratio", "physics ratio"]
    lines = table(header, rows, "ll" + ("l" if modes else "") + "rrrrrr")
    return [*lines, "", f"One core, CPU time, {data['seconds']:g} s x {data['repeats']} per measurement (median)."]


def render_adaptation(data: dict) -> list[str]:
    rows = []
    for c in data["cases"]:
        rows.append([c["order"], str(c["meta_batch"]), f"{1000 * statistics.median(c['batched_s']):.1f}",
                     f"{1000 * statistics.median(c['loop_s']):.1f}", f"{c['speedup']:.2f}x",
                     f"{c['max_abs_diff']:.1e}"])
    dev = data["device"]
    lines = [f"Device {dev} ({data['device_name']}), torch {data['torch']}, {data['threads']} CPU thread(s), "
             f"median of {len(data['cases'][0]['batched_s'])}, ms per outer gradient.", ""]
    return lines + table(["order", "meta-batch", f"batched ms ({dev})", f"loop ms ({dev})", "loop / batched",
                          "max abs diff"], rows, "lrrrrr")


def render_soak(data: dict) -> list[str]:
    soak, base = data["soak"], data["baseline"]
    sa, ba = soak["accounting"], base["accounting"]
    mid = sum(k["during_sample"] for k in soak["kills"])

    def both(fn: Callable[[dict], str]) -> list[str]:
        return [fn(soak), fn(base)]

    rows = [
        ["wall time (s)", *both(lambda p: f"{p['seconds']:.0f}")],
        ["iterations completed", *both(lambda p: str(p["iterations"]))],
        ["kills (SIGKILL) / landed mid-sample", f"{len(soak['kills'])} / {mid}", str(len(base["kills"]))],
        ["pool.restarts / replacements", *both(lambda p: f"{p['pool']['restarts']} / {p['pool']['replacements']}")],
        ["pool.reissued_requests", *both(lambda p: str(p["pool"]["reissued_requests"]))],
        ["env steps expected", *both(lambda p: f"{p['accounting']['steps_expected']:,}")],
        ["env steps received (trainer)", *both(lambda p: f"{p['trainer_env_steps']:,}")],
        ["**env steps lost**", *both(lambda p: str(p["env_steps_lost"]))],
        ["**batches double counted** (episodes)",
         *both(lambda p: "{double_counted_batches} ({double_counted_episodes})".format(**p["accounting"]))],
        ["pool.duplicates_dropped", *both(lambda p: str(p["pool"]["duplicates_dropped"]))],
        ["batches not matching their request", str(sa["bad_batches"]), str(ba["bad_batches"])],
        ["failed sample() calls", str(sa["failed_calls"]), str(ba["failed_calls"])],
        ["env-steps/s (whole loop)", *both(lambda p: f"{p['env_steps_per_s']:,.0f}")],
        ["env-steps/s (inside sample())", *both(lambda p: f"{p['sample_env_steps_per_s']:,.0f}")],
        ["iteration time mean / max (s)",
         *both(lambda p: f"{p['iteration_seconds_mean']:.2f} / {p['iteration_seconds_max']:.2f}")],
        ["load average at start / end",
         *both(lambda p: f"{p['load_average_start'][0]:.2f} / {p['load_average_end'][0]:.2f}")],
    ]
    kills = ", ".join(f"t={k['t_s']:.0f}s slot {k['slot']}{' mid-sample' if k['during_sample'] else ''}"
                      for k in soak["kills"])
    ratio = soak["env_steps_per_s"] / base["env_steps_per_s"]
    return [*table(["", "soak (killer on)", "baseline (no killer)"], rows, "lrr"), "",
            f"Throughput ratio soak / baseline: {ratio:.2f}. Kills: {kills or 'none'}."]


def render_learning(data: dict) -> list[str]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in data["runs"]:
        groups.setdefault((run["family"], run["algorithm"]), []).append(run)
    steps = sorted({int(k) for r in data["runs"] for k in r["returns"]})
    rows = []
    for (family, algorithm), runs in groups.items():
        cells = [mean_stderr([v for r in runs for v in r["returns"][str(k)]]) if str(k) in runs[0]["returns"]
                 else "–" for k in steps]
        success = [v for r in runs for v in r["successes"].get("1", [])]
        rows.append([family, algorithm, ", ".join(str(r["seed"]) for r in runs), f"{runs[0]['env_steps']:,}", *cells,
                     mean_stderr(success) if success else "–"])
    header = ["family", "algorithm", "seeds", "env steps / seed", *(f"after {k}" for k in steps), "success after 1"]
    return table(header, rows, "llrr" + "r" * (len(steps) + 1))


def render_deployment(data: dict) -> list[str]:
    rows = [[r["task_id"], f"{r['return_before']:.2f}", f"{r['return_after']:.2f}", f"{r['success_before']:.2f}",
             f"{r['success_after']:.2f}"] for r in data["adaptation"]]
    rows.append(["mean ± stderr", mean_stderr([r["return_before"] for r in data["adaptation"]]),
                 mean_stderr([r["return_after"] for r in data["adaptation"]]), "", ""])
    lat, n = data["latency_ms"], len(data["latency_ms_per_repeat"]["total"])
    lines = table(["held-out task", "return before", f"after {data['steps']} step(s)", "success before", "after"],
                  rows, "lrrrr")
    return [*lines, "", f"Model `{data['model']}` (version {data['version']}). Pull-to-first-action, median of {n}: "
                    f"`fleet pull` {lat['pull']:.0f} ms, runtime load {lat['load']:.1f} ms, first safe action "
                    f"{lat['first_action']:.2f} ms, {lat['total']:.0f} ms in total."]


def render_vs_rllib(data: dict) -> list[str]:
    cfg, limit, envs = data["config"], data["physics_limit"], data.get("env_limit") or {}
    with_env = bool(envs)
    lines = [f"{cfg['steps_per_iteration']:,} env steps per iteration, {cfg['iterations']} iteration(s) per system "
             f"per round, {cfg['rounds']} rounds, interleaved; learning included.", "",
             "| system | each round (env steps/s) | mean | fraction of physics limit |"
             + (" fraction of env limit |" if with_env else ""), "|---|---|---:|---:|" + ("---:|" if with_env else "")]
    for s in data["systems"].values():
        each = " / ".join(f"{v:,.0f}" for v in s["steps_per_s"])
        env = s.get("fraction_of_env_limit")
        lines.append(f"| {s['label']} | {each} | {s['mean']:,.0f} | {s['fraction_of_physics_limit']:.2f} |"
                     + ((f" {env:.2f} |" if env is not None else " – |") if with_env else ""))
    lines.append("")
    for key, ratio in sorted(data["ratios"].items()):
        each = " / ".join(f"{v:.2f}" for v in ratio["per_round"])
        lines.append(f"ratio {key}: {each} (mean {ratio['mean']:.2f})")
    b, a = limit["before"], limit["after"]
    lines.append(f"physics limit: raw stepSimulation {b['raw_step_simulation_per_s_per_core']:,.0f}/s before, "
                 f"{a['raw_step_simulation_per_s_per_core']:,.0f}/s after (one core) / {b['substeps_per_env_step']} "
                 f"substeps x {limit['rollout_processes']} rollout processes = {limit['env_steps_per_s']:,.0f} "
                 "env steps/s")
    for s in data["systems"].values():
        if s.get("steps_per_s_in_rollouts"):
            env = (envs.get(s.get("family", "reach")) or {}).get("env_steps_per_s")
            share = f" ({s['steps_per_s_in_rollouts'] / env:.2f} of its env limit)" if env else ""
            lines.append(f"{s['label']}: workers inside rollouts {s['worker_busy_fraction']:.2f} of the wall time, "
                         f"{s['steps_per_s_in_rollouts']:,.0f} env steps/s while there{share}")
    for family, env in sorted(envs.items()):
        line = (f"env limit ({family}): the rollout loop alone, {env['env_steps_per_s_per_core']:,.0f} env steps/s per "
                f"core (CPU time) x {env['cores']} = {env['env_steps_per_s']:,.0f} env steps/s")
        rllib = data["systems"].get("rllib")
        if rllib and family == rllib.get("family", "reach"):
            line += f"; the most any system could be over RLlib here: {env['env_steps_per_s'] / rllib['mean']:.2f}x"
        lines.append(line)
        moving = env.get("moving_physics")
        if moving:
            raw = (b["raw_step_simulation_per_s_per_core"] + a["raw_step_simulation_per_s_per_core"]) / 2
            lines.append(f"physics while the arm moves ({family}): {moving['step_simulation_per_s_per_core']:,.0f} "
                         f"stepSimulation/s per core = {moving['step_simulation_per_s_per_core'] / raw:.2f} of the raw "
                         "rate at rest: no env of this family can reach more of the physics limit")
    return lines


def render_scaling(data: dict) -> list[str]:
    w, c = data["workers"], data["cluster"]
    lines = ["| rollout workers | each round (env steps/s) | mean | sampling only | per worker |",
             "|---:|---|---:|---:|---:|"]
    for row in w["rows"].values():
        each = " / ".join(f"{v:,.0f}" for v in row["steps_per_s"])
        lines.append(f"| {row['workers']} | {each} | {row['mean']:,.0f} | {row['sample_mean']:,.0f} "
                     f"| {row['per_worker']:.2f} |")
    if w["skipped"]:
        lines.append(f"\nnot run: {', '.join(map(str, w['skipped']))} workers (this machine has "
                     f"{w['usable_cores']} usable cores)")
    verdict = "within" if c["loss_within_share"] else "MORE than"
    recovery = " / ".join(f"{i['steps_per_s']:,.0f}" for i in c["recovery_iterations"])
    lines += ["", f"{c['nodes']} Ray nodes x {c['workers_per_node']} worker(s) on 127.0.0.1: "
              f"{c['before']['steps_per_s']:,.0f} env steps/s; kill iteration (node removed "
              f"{c['kill_after_s']:.1f} s in) {c['kill_iteration']['steps_per_s']:,.0f}/s; recovery "
              f"{recovery}/s; after "
              f"{c['after']['steps_per_s']:,.0f}/s",
              f"node loss cost {c['loss']:.2f} of the rate, {verdict} the node's share {c['node_share']:.2f} "
              f"(pool: {c['pool']})"]
    return lines


def render_learner_speed(data: dict) -> list[str]:
    lines = ["| learner | device | workers | meta-batch | steps per update | update s (each) | gradient steps/s "
             "| iteration s (median) | blocked fraction |", "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in data["rows"]:
        each = " / ".join(f"{s:.2f}" for s in r["learn_seconds"])
        steps = str(r["gradient_steps_per_update"])
        if r.get("background_steps"):
            steps += f" (+{r['background_steps']} in the background)"
        iteration = f"{statistics.median(r['iteration_seconds']):.2f}" if r.get("iteration_seconds") else "–"
        lines.append(f"| {r['learner']} | {r['device']} | {r['workers']} | {r['meta_batch']} "
                     f"| {steps} | {each} | {r['gradient_steps_per_s']:.1f} | {iteration} "
                     f"| {r['blocked_fraction']:.3f} |")
    lines += [f"skipped {s['learner']} on {s['device']}: {s['error']}" for s in data["skipped"]]
    lines.append(f"torch CPU threads: {data['torch_threads']}")
    return lines


# A marker NAME reads results/NAME.json with the renderer named NAME or the part of NAME before a "-" (so
# `adaptation-cuda` and `learning-algos` render like `adaptation` and `learning`).
RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "throughput": render_throughput, "envs": render_envs, "adaptation": render_adaptation, "soak": render_soak,
    "learning": render_learning, "deployment": render_deployment, "vs-rllib": render_vs_rllib,
    "scaling": render_scaling, "learner-speed": render_learner_speed,
    "learning-v2": learning_report.render_learning_v2, "learning-curves": learning_report.render_learning_curves,
    "robot-exams": robot_exams_report.render_robot_exams, "sweep": sweep_report.render_sweep,
}
# Tables that read another table's JSON: `learning-curves` (and `learning-curves-SUFFIX`) read
# results/learning-v2.json (results/learning-v2-SUFFIX.json).
SOURCES = {"learning-curves": "learning-v2"}


# ------------------------------------------------------------------------------------- the docs
def render(name: str, root: Path) -> str:
    """The block body for marker `name`: the table and its source line, from results/<name>.json."""
    parts = name.split("-")  # `vs-rllib-joint` renders like `vs-rllib`, `adaptation-cuda` like `adaptation`
    known = next((p for p in ("-".join(parts[:n]) for n in range(len(parts), 0, -1)) if p in RENDERERS), None)
    if known is None:
        raise ReportError(f"unknown table {name!r} in a <!-- report:... --> marker; expected one of "
                          f"{', '.join(sorted(RENDERERS))}, optionally followed by -SUFFIX")
    renderer = RENDERERS[known]
    path = root / "results" / f"{SOURCES.get(known, known)}{name[len(known):]}.json"
    rel = path.relative_to(root).as_posix()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{rel} is missing: run the benchmark that writes it (see benchmarks/README.md)") from None
    try:
        lines = renderer(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ReportError(f"{rel}: cannot render table {name!r}: {exc!r}") from exc
    return "\n".join([*lines, "", source_line(rel, data)]) + "\n"


def regenerate(text: str, root: Path) -> str:
    """`text` with every marked block replaced by its freshly rendered body."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), root) + m.group(4), text)


def run(root: Path, docs: tuple[str, ...], check: bool) -> int:
    """Regenerate (or, with `check`, compare) every doc; return the number of docs out of sync."""
    stale = 0
    for doc in docs:
        path = root / doc
        old = path.read_text()
        new = regenerate(old, root)
        if old == new:
            continue
        stale += 1
        if check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       f"{doc} (committed)", f"{doc} (from results/)"))
        else:
            path.write_text(new)
            print(f"report: rewrote {doc}", file=sys.stderr)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff if a doc is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="instead: draw the learning curves of "
                        "results/learning-v2.json (see --plot-from) to PNG (needs matplotlib)")
    parser.add_argument("--plot-from", default="learning-v2", metavar="NAME", help="the results/NAME.json --plot reads")
    parser.add_argument("docs", nargs="*", default=list(DOCS), help=f"docs to process (default: {' '.join(DOCS)})")
    args = parser.parse_args(argv)
    if args.plot:
        return plot(args.root, args.plot_from, args.plot)
    try:
        stale = run(args.root, tuple(args.docs), args.check)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"report: {stale} doc(s) differ from results/; run `python benchmarks/report.py` and commit",
              file=sys.stderr)
        return 1
    return 0


def plot(root: Path, name: str, png: Path) -> int:
    """`--plot`: the learning-curve figure from results/<name>.json; 1 without matplotlib, 2 without the JSON."""
    path = root / "results" / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"report: {path} is missing: run benchmarks/learning.py (see docs/results.md)", file=sys.stderr)
        return 2
    try:
        learning_report.plot_learning_curves(data, png)
    except ImportError as exc:
        print(f"report: --plot needs matplotlib ({exc}); no figure written", file=sys.stderr)
        return 1
    print(f"report: wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
