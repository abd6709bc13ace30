"""Baselines: classifiers fitted on each episode's support set, with nothing meta-learned."""
