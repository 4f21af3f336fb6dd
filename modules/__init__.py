"""carecourse disease modules: GMF loading, validation and drawing, and the embedded library."""
