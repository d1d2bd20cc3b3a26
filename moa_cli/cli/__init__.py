"""The `moa` command line: thin front ends over `moa_cli.api` and `moa_cli.engine`."""
