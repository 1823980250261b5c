"""EC2 helpers the stages share, so that a stage module holds only its own ``run`` and ``cleanup``.

- ``instances``: instance tags, RunInstances parameters and placements, the role's bakes in flight;
- ``images``: image names and tags, tagging an image's snapshots, re-tagging a reused AMI;
- ``watch``: the batched wait for an instance's own report (its tags), with console tails.

Nothing here imports a stage (the stages' context types only for type checking): stages import
these modules, never each other (``tests/test_code_shape.py``).
"""
