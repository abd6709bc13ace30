import torch

# Test workloads are tiny: one intra-op thread avoids OpenMP spin-waiting when the machine is shared
# (with 2 threads and another busy process, small ops ran ~10x slower).
torch.set_num_threads(1)
