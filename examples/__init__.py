"""Examples that use fedmpi from outside the package (run them from the repository root)."""
