"""carecourse engine: SimPy patients stepped through GMF disease graphs."""
