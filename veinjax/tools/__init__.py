"""Command-line helpers run with `python -m veinjax.tools.<name>` (convert_weights)."""
