"""Continual (lifelong) learners: OML, La-MAML and the baselines they are measured against. They learn from a
stream (fastadapt.tasks.streams) rather than from episodes, and run with ``fastadapt continual``."""
