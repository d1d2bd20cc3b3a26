"""`python -m moa_cli` runs the `moa` command."""

from moa_cli.cli.entry import main

if __name__ == "__main__":
    main()
