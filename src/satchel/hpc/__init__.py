"""HPC integration: GPU driver discovery for --nv/--rocm (gpu.py) and its helpers.

Everything here may run on the exec path, so modules import only os, struct and stat at load.
"""
