"""Running containers: decide the mounts as data (plan.py), then apply them (executor.py).

Kept empty: `satchel exec` imports the submodules it needs and nothing else.
"""
