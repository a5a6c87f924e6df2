"""`python -m rabbittask` runs the CLI."""

from rabbittask.cli import main

main()
