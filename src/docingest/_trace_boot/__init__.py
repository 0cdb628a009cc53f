"""Files put first on a traced command's PYTHONPATH (see ``docingest.trace``)."""
