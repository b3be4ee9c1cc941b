"""Dataset loaders: the `Task` registry and one module per dataset, each reading its official layout."""
