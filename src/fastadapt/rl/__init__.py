"""Meta-reinforcement learning: task distributions on gymnasium (2D navigation, half-cheetah velocity), batched
trajectory sampling, the linear feature baseline, TRPO, and the MAML-RL training/evaluation runner.

Importing this package registers ``fastadapt/Navigation2D-v0`` and ``fastadapt/HalfCheetahVel-v0`` with gymnasium
(when gymnasium is installed: ``pip install fastadapt[rl]``).
"""

from fastadapt.rl.envs import ENV_IDS, HALFCHEETAH_VEL_ID, NAVIGATION_ID, make_batched, register

try:
    register()
except Exception:  # gymnasium missing: the numpy navigation batch still works; make() says what to install
    pass

__all__ = ["ENV_IDS", "HALFCHEETAH_VEL_ID", "NAVIGATION_ID", "make_batched", "register"]
