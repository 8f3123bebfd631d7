"""Definition files and building images (fetch -> assemble -> write); see docs/DESIGN.md."""
