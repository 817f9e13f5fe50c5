"""Models: loading from every kind of spec, the tasks they serve, tiny seeded test models."""
