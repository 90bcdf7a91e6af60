"""metafleet's front door: the `fleet` command (and `python -m metafleet`).

It sits above every layer (deploy, learner, workers, policy, fleet): it parses, validates and calls one
function per command. Nothing below imports it. Modules:

- `metafleet.cli`: the parser, `main`, and the training-side commands `train`, `eval`, `tasks`.
- `metafleet.args`: the exit codes, the bad-input error, the one strict `--task` parser.
- `metafleet.registry_commands`: `adapt`, `promote`, `pull`.
- `metafleet.robot_commands`: `run`, `serve-robot`.
"""

from metafleet.packages import pin_packages

pin_packages()  # before anything below imports policy, fleet, ...: see metafleet/packages.py
