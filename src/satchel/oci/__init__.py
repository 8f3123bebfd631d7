"""OCI/Docker images: registries, archives, image layouts, layer extraction, the blob cache.

Nothing here is imported on the exec path. Entry points: `agent.fetch` (Bootstrap: docker/oci...),
`pull.pull` (satchel pull), `cache.Cache` (satchel cache).
"""
