"""The unit layer: pure logic, rendering against golden files, scripts parsed and linted; no server.

A unit test needs no moto, goiardi or instance runner; the root conftest's session servers start only
when a test asks for them, so nothing here starts one.
"""
