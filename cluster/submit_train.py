"""`ray submit` entry point: run `fleet train` on the head of a cluster started with `ray up cluster/*.yaml`.

    ray submit cluster/local.yaml cluster/submit_train.py -- configs/reach.yaml --set train.iterations=2

`ray submit` uploads only this file (to ~/submit_train.py on the head) and runs it with the head's `python`
(the ~/venv that cluster/*.yaml create, where metafleet is installed from ~/metafleet). The script:

1. changes into the project synced by `ray up` (`--project-dir`, default ~/metafleet), so config paths
   such as `configs/reach.yaml` mean the same as in your checkout;
2. picks the MLflow tracking URI: `--tracking-uri`, else MLFLOW_TRACKING_URI (cluster/*.yaml export the
   head's server, http://127.0.0.1:5000, in ~/.bashrc), else the default sqlite:///mlflow.db in the
   project dir, with a warning; an http(s) server gets `--wait-s` seconds to answer (the head starts it
   in the background);
3. joins the running cluster (`--ray-address`, default "auto": the cluster on this head) with
   `workers.ray_connect.init_ray`, the same bounded connect `fleet train` uses;
4. hands the rest of the arguments to `fleet train` (`metafleet.cli.main`) and exits with its exit code
   (0 ok, 2 bad input, 1 failure; see docs/errors.md).

Its own options go before the config: `-- --tracking-uri URI configs/reach.yaml --set a.b=c`.
`ray submit` itself exits 0 or 1 (it does not pass the script's exit code through); the code is in the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

EXIT_BAD_INPUT = 2  # metafleet.args.EXIT_BAD_INPUT; repeated so that --help works without metafleet
DEFAULT_PROJECT_DIR = "~/metafleet"  # where cluster/*.yaml put the repository (file_mounts)
DEFAULT_WAIT_S = 60.0
PROBE_EVERY_S = 1.0


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split argv into this script's options and the `fleet train` arguments (everything else)."""
    parser = argparse.ArgumentParser(
        prog="submit_train.py", allow_abbrev=False,
        description="Run `fleet train` on a Ray cluster's head (for `ray submit`). Unknown arguments "
                    "(CONFIG, --set KEY=VALUE, --resume RUN_ID) go to `fleet train`.")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                               "else sqlite:///mlflow.db in the project dir)")
    parser.add_argument("--project-dir", default=DEFAULT_PROJECT_DIR,
                        help=f"the repository on the head, synced by `ray up` (default {DEFAULT_PROJECT_DIR})")
    parser.add_argument("--ray-address", default="auto",
                        help="Ray cluster to join (default 'auto': the one running on this machine)")
    parser.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S,
                        help=f"seconds to wait for an http(s) tracking server to answer (default {DEFAULT_WAIT_S:g})")
    return parser.parse_known_args(argv)


def choose_tracking_uri(flag: str | None) -> str | None:
    """Export the tracking URI for `fleet train`; None (after a warning) means the sqlite default."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        return uri
    print(f"submit_train: warning: no --tracking-uri and no MLFLOW_TRACKING_URI: tracking into "
          f"sqlite:///mlflow.db in {os.getcwd()} on the head (unless the config sets tracking.tracking_uri); "
          "the head's MLflow server is --tracking-uri http://127.0.0.1:5000", file=sys.stderr, flush=True)
    return None


def wait_for_server(uri: str, wait_s: float) -> bool:
    """True once an http(s) MLflow server answers /health (other URIs: True at once)."""
    if not uri.startswith(("http://", "https://")):
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            if time.monotonic() >= deadline:
                return False
        time.sleep(PROBE_EVERY_S)


def main(argv: list[str] | None = None) -> int:
    """Prepare the head's environment, join the cluster, run `fleet train`; return its exit code."""
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    project = os.path.expanduser(args.project_dir)
    if not os.path.isdir(project):
        print(f"submit_train: --project-dir {project!r} is not a directory; expected the repository that "
              "`ray up` synced (file_mounts '~/metafleet': '.')", file=sys.stderr)
        return EXIT_BAD_INPUT
    os.chdir(project)
    uri = choose_tracking_uri(args.tracking_uri)
    if uri and not wait_for_server(uri, args.wait_s):
        print(f"submit_train: the MLflow server {uri} did not answer within {args.wait_s:g} s; "
              "start it (cluster/*.yaml start one on the head) or pass another --tracking-uri", file=sys.stderr)
        return EXIT_BAD_INPUT

    from metafleet.args import bad_input
    from metafleet.cli import main as fleet_main
    from workers.ray_connect import RayConnectError, init_ray

    os.environ["RAY_ADDRESS"] = args.ray_address  # anything that calls init_ray later joins the same cluster
    try:
        init_ray(args.ray_address)
    except RayConnectError as exc:
        return bad_input(str(exc))
    import ray

    print(f"submit_train: joined the Ray cluster at {ray.get_runtime_context().gcs_address} "
          f"({ray.cluster_resources().get('CPU', 0):g} CPUs); tracking to {uri or 'sqlite:///mlflow.db'}; "
          f"running fleet train {' '.join(train_args)}", flush=True)
    return fleet_main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main())
