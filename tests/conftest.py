import os
import tempfile
from pathlib import Path

import torch

# Test workloads are tiny: one intra-op thread avoids OpenMP spin-waiting when the machine is shared
# (with 2 threads and another busy process, small ops ran ~10x slower).
torch.set_num_threads(1)

# fastadapt's C++ kernels (fastadapt.engine.native) are built into a cache directory the tests can always write to,
# wherever the user's home is (a read-only home would otherwise turn the kernel off and fail its tests).
user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
os.environ.setdefault("FASTADAPT_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"fastadapt-test-cache-{user}"))
