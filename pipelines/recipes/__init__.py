"""Shipped recipes (the laptop dry run is the default)."""
