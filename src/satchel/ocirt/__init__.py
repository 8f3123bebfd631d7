"""satchel as an OCI runtime: runc's command line over satchel's plan and executor.

spec.py parses a bundle's config.json into plain data; plan.py turns it into a ContainerPlan
of the executor's operations (runtime/plan.py's op table); state.py keeps the container's
record under --root; lifecycle.py forks the container's init for `create` and drives
start/kill/delete/exec; ops.py holds the few operations only OCI containers need (generic
mounts, device nodes, the process's credentials, the create/start barrier). Named ocirt, not
oci: satchel.oci is the image registry/layout package.
"""
