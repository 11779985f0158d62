"""``python -m optkit.cli`` (what sweep jobs run)."""

from optkit.cli import main

main()
