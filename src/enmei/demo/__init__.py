"""The demo: a real HTTP service with fault knobs, and the scenario ``make demo`` runs."""
