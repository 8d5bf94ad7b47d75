"""``python -m docwatch`` runs the docwatch CLI."""

from docwatch.cli import main

main()
