"""The declarative-Pipeline harness (harness.groovy) and its pytest driver (driver.py)."""
