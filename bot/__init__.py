"""patientbot: the kernel (core), config, store, engine, messaging, ops, and the composition root
(app). Layers are enforced by import-linter (pyproject.toml [tool.importlinter])."""
