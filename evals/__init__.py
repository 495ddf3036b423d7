"""Benchmarks' readers and metrics (installed as ``tritoncorr.evals``): DAVIS-2017 J&F."""
