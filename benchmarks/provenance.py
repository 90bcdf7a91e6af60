"""Where a benchmark figure came from: the command, commit, machine, load and date of the run, stored next
to the raw numbers in one JSON file under ``results/`` (read back by ``benchmarks/report.py``).

Every script calls :func:`start` first (so the load average is the one at the start of the run) and
:func:`write` at the end. Only the standard library is imported here; torch and Ray versions are read from
package metadata, so recording them imports neither.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def git_commit() -> str:
    """`git rev-parse --short HEAD`, plus "-dirty" when the working tree has changes; "unknown" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def cpu_model() -> str | None:
    """The first `model name` of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cuda_device() -> str | None:
    """Name of CUDA device 0 if torch is already imported and sees one (never imports torch itself)."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    except Exception:  # a broken driver must not lose the benchmark's numbers
        return None


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": package_version("torch"), "ray": package_version("ray"), "cuda_device": None}


def start(script: str, argv: list[str] | None) -> dict:
    """Provenance at the start of a run of ``benchmarks/<script>``; `argv` as the script got it."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": shlex.join(["python", f"benchmarks/{script}", *args]), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": list(os.getloadavg()), "machine": machine()}


def write(path: str | Path, data: dict, prov: dict) -> Path:
    """Write `data` plus `provenance` (with the load average at the end) to `path` as JSON; return the path."""
    prov = {**prov, "load_average_end": list(os.getloadavg()),
            "machine": {**prov["machine"], "cuda_device": cuda_device()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "provenance": prov}, indent=1) + "\n")
    print(f"raw results: {path}", file=sys.stderr, flush=True)
    return path


def default_path(name: str) -> Path:
    """``results/<name>.json`` in this repository."""
    return RESULTS / f"{name}.json"


def run(script: str, argv, parse_config, measure, render) -> dict:
    """A benchmark's `main`: parse (-> config, JSON path or None), measure, print the rendered table, write the
    raw JSON with provenance when a path is given; returns the measured data."""
    prov = start(script, argv)
    cfg, json_path = parse_config(argv)
    data = measure(cfg)
    print(render(data))
    if json_path:
        write(json_path, data, prov)
    return data


def log(message: str) -> None:
    """Progress for the reader of a long benchmark, on stderr (stdout holds the table)."""
    print(message, file=sys.stderr, flush=True)


def add_job_args(parser, name: str) -> None:
    """The flags of a benchmark that runs training jobs: --set overrides, --json OUT, --quick."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every job, as `fleet train --set` (repeatable)")
    parser.add_argument("--json", metavar="OUT", help=f"raw JSON path (default results/{name}.json; --quick "
                        "writes only with --json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
