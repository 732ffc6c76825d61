"""Built-in plugins, one folder each; found by name through `gateway.registry`."""
