"""Mount point of the session tmpfs; this package holds no code.

Inside the container's private mount namespace the runtime mounts a tmpfs on this directory and
stages the container there (image root, generated /etc files, underlay copies) before
pivot_root. A directory that ships with satchel exists on every install, needs no
administrator setup and hides nothing a bind source could name. It is a package (this file)
so that every installer copies it without extra package-data rules.
"""
