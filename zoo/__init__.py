"""Builder of the built-in model zoo (synthetic shapes, training, export, reference outputs)."""
