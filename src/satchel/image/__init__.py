"""Image files, independent of the runtime: SIF, SquashFS, sandboxes, metadata.

Kept empty on purpose: `satchel exec` imports `satchel.image.sif` and `satchel.image.formats`,
and anything imported here would be paid for on every container launch.
"""
