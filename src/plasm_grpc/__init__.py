"""Plasm: a peer-to-peer network for running WebAssembly jobs with signed receipts."""

__version__ = "0.1.0"
