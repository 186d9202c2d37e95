"""The window-control model: features, synthetic policy, training, export, registry, runtime."""
