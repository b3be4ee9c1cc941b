"""`python -m probe.report`: the `ovprobe-report` command."""

from probe.report.main import main

main()
