"""JSON Schemas generated from proto/plasm/v1 by scripts/generate.py."""
