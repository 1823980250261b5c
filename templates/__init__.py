"""Jinja2 templates of the AMI Bakery, shipped as package data (``bakery_templates``).

``linux/`` and ``windows/`` hold the instance-side scripts, ``jenkins/`` the job XML.
"""
