"""scalars package."""
