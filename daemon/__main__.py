"""``python -m daemon`` runs the docwatch CLI."""

from .cli import main

main()
