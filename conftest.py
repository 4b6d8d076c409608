"""Makes the project importable from the repository root for pytest."""
