"""lowlat: ultra-low-latency ANN-to-SNN conversion (Xiong et al., CTA 2025)."""

__version__ = "0.1.0"
