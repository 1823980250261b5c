"""Fault injection for the bakery CLI: a fault-injecting proxy in front of moto server (``proxy``),
the list of every AWS call a bake makes (``calls``), shared helpers (``support``) and the tests."""
