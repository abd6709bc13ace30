"""What makes inner loops fast and never changes a result (docs/architecture.md, docs/performance.md).

- execution: a meta-batch through a method's per-task inner loop (loop, vmap or fold; chunks; task workers;
  torch.compile; channels-last images)
- strategy: ``auto``'s measuring of those choices on the first meta-batch
- guard: the gradient guard (vmap and fold must give the per-task loop's meta-gradient)
- functional, folding, taskpool, fastlayers, layers, native: the pieces they are made of
"""
