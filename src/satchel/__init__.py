"""satchel: an HPC container platform compatible with Apptainer/Singularity."""

__version__ = "0.1.0"
