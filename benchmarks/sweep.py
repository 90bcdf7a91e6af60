"""A `fleet sweep` as a benchmark: the sweep's results JSON (every trial's held-out figures and yardsticks, the
per-point mean ± stderr over seeds) with provenance, under results/sweep-NAME.json, rendered into the docs by
`benchmarks/report.py` (`<!-- report:sweep-NAME -->`, benchmarks/sweep_report.py), with the sweep's wall time and
each trial's, so a reader can size the same sweep on a cluster.

    python benchmarks/sweep.py --name main-job -- configs/reach.yaml --seeds 3
    python benchmarks/sweep.py --name arm-exam -- configs/robots-arm.yaml --seeds 3

Everything after `--` is `fleet sweep`'s arguments (its own `--name` and `--out` are set here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    mine, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="results/sweep-NAME.json; the sweep is named NAME-DATE")
    parser.add_argument("--out", type=Path, help="default results/sweep-NAME.json")
    args = parser.parse_args(mine)
    if not rest:
        parser.error("give fleet sweep's arguments after --, e.g. -- configs/reach.yaml --seeds 3")
    prov = provenance.start("sweep.py", argv)
    out = Path(tempfile.mkdtemp()) / "sweep.json"
    name = f"{args.name}-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metafleet", "sweep", *rest, "--name", name, "--out", str(out)],
                   cwd=ROOT, check=True)
    results = json.loads(out.read_text())
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    provenance.write(args.out or ROOT / "results" / f"sweep-{args.name}.json", results, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
