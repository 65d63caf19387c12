"""enmei."""
