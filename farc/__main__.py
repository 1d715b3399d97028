"""`python -m farc ...` is the `farc` command (handy under torchrun without --no-python)."""

from farc.cli import main

main()
