"""Telemetry: the events the runtime emits (events.py) and the memory sampler that feeds them (memory.py)."""

from lowvram.telemetry.events import (
    CacheScheduled,
    Event,
    EventLog,
    EventSink,
    LogMessage,
    MemorySample,
    PlanSwitched,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepFinished,
    TransformerCall,
    ignore,
)

__all__ = [
    "Event",
    "RunStarted",
    "StageStarted",
    "StageFinished",
    "StepFinished",
    "TransformerCall",
    "CacheScheduled",
    "MemorySample",
    "PlanSwitched",
    "LogMessage",
    "RunFinished",
    "RunCancelled",
    "RunFailed",
    "EventLog",
    "EventSink",
    "ignore",
]
