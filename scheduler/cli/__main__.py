"""`python -m scheduler.cli`: the same as the `stylebatch` command."""

from scheduler.cli import main

main()
