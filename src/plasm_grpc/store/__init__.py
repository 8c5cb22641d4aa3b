"""Durable local state: the receipt store."""
