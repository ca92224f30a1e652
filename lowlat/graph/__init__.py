"""Tracing and graph checks for conversion: one IF neuron per activation call site
(:mod:`~lowlat.graph.tracing`), and the refusal, by node and source line, of what the SNN
simulator cannot run faithfully (:mod:`~lowlat.graph.checks`)."""

from lowlat.graph.checks import (
    MAX_POOL_HINT,
    MAX_POOLS,
    STATELESS,
    SUPPORTED,
    check_convertible,
    time_broadcast,
)
from lowlat.graph.tracing import ACT_FUNCTIONS, ACT_METHODS, ConversionError, set_module, trace

__all__ = ["ACT_FUNCTIONS", "ACT_METHODS", "MAX_POOLS", "MAX_POOL_HINT", "STATELESS",
           "SUPPORTED", "ConversionError", "check_convertible", "set_module", "time_broadcast",
           "trace"]
