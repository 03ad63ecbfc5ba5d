"""jaxguard."""
