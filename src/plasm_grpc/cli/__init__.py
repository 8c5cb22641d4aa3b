"""The `plasm` command-line client."""
