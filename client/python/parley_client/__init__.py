"""Python client for Parley (parley.v1)."""
