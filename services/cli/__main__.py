"""`python -m services.cli`: the `deskmail` command (how `deskmail up` starts its processes)."""

from services.cli import main

main()
