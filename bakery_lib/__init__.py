"""AMI Bakery: bake fully configured AMIs per Chef role, stage by stage, from Jenkins."""

__version__ = "0.1.0"
