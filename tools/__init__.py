"""Developer tools that are not part of the package (the documentation generator)."""
