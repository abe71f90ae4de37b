"""Command-line interface: the parser (pure) and the entry point."""
