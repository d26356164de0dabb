"""`python -m scratchlm` is the `scratchlm` command."""

from scratchlm.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
