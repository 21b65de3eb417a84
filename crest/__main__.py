"""``python -m crest`` runs the CLI."""

from __future__ import annotations

from crest.cli import main

main()
