"""``python -m bakery_lib.catalog``: print the catalogue reference (docs/reference/catalogue.md)."""

from . import reference_markdown

print(reference_markdown(), end="")
