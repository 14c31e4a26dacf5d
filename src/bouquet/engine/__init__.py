"""The engine: the round driver, the simulator and its trainers, evaluation, robust aggregation, checkpoints."""

from .robust import RobustConfig
from .rounds import ClientResults, RoundDriver, RunState
from .simulator import Simulator
from .spec import RunSpec

__all__ = ["ClientResults", "RobustConfig", "RoundDriver", "RunSpec", "RunState", "Simulator"]
