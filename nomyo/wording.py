"""Counts in messages an operator reads: "1 backend", "2 backends", never "1 backends"."""


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and `noun`, the noun in the plural unless the count is one (`plural`: irregular)."""

    return f"{count} {noun if count == 1 else plural or noun + 's'}"
