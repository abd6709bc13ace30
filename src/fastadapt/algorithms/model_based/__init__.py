"""Model-based meta-learners: the model itself carries what it learned about a task, in an external memory
or in weights generated from the support set."""
