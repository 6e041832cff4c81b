"""Thin request handlers, grouped by area."""
