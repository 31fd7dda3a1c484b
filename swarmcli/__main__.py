"""`python -m swarmcli`: the same as the `swarm` command."""

from swarmcli.main import main

main()
