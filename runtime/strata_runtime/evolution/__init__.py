"""Evolution state of agent configs and skills: versions, events, rollback, A/B experiments."""

from strata_runtime.evolution.memory import MemoryEvolutionStore
from strata_runtime.evolution.sql import SqlEvolutionStore
from strata_runtime.evolution.store import (
    Arm,
    ArmResult,
    EvolutionEvent,
    EvolutionStore,
    Experiment,
    Version,
    assign_arm,
)

__all__ = ["Arm", "ArmResult", "EvolutionEvent", "EvolutionStore", "Experiment", "MemoryEvolutionStore",
           "SqlEvolutionStore", "Version", "assign_arm"]
