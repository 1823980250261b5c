"""``python -m bakery_lib.catalog``: print the catalogue reference (docs/generate.py writes it to docs/)."""

from . import reference_markdown

print(reference_markdown(), end="")
