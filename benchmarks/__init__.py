"""Performance benchmarks of openmm-cgnn (run them with ``python benchmarks/run.py``; see run.py)."""
