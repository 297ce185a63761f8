"""A project's state in ``MODEL_DIR`` and Redis: the project owner (rubric choice, version names, staging, the
v0 record, the active pointer), the registry, training triggers, the serving mark and the prediction cache."""
