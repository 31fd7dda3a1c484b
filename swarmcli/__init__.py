"""The `swarm` command line: the top floor that wires bus, ledger, runner and agents into processes."""
