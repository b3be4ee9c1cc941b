"""`python -m probe.run` (and torchrun's `-m probe.run`): the `ovprobe` command."""

from probe.run.cli import main

main()
