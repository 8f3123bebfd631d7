"""Names vulture cannot see used, for tests/unit/test_dead_code.py (parsed, never run).

vulture finds unused code by name across src/satchel. What it cannot follow is listed here,
each with why; everything else it reports is dead and goes. The executors' `op_*` methods,
called as getattr(self, "op_" + op.kind), are allowed by pattern in the test itself.
Add a name here only with its reason; a name used by nothing at all is deleted instead.
"""

# pylint: skip-file
# flake8: noqa
_ = object()

# -- looked up by string -------------------------------------------------------------------------
_._import  # cli/commands/key.py: globals()[f"_{sub}"] dispatches `key import|export|newpair`
_._export
_._newpair

# -- protocols called by the standard library ----------------------------------------------------
_.__getattr__  # image/sif.py: a module's __getattr__ (PEP 562) forwards the writer's names
_.readable  # oci/stream.py: io.RawIOBase's protocol (tarfile and gzip ask the stream)
_.seekable
_.tell
# satchel/__init__.py: the launch bundle's finder and loader, called by the import system
_.find_spec
_.create_module
_.exec_module
_.has_location  # ModuleSpec attributes the import system reads
_.submodule_search_locations
# ocirt/jsonlite.py: the attributes json's C scanner reads from the context it is given
_.strict
_.object_hook
_.object_pairs_hook
_.parse_float
_.parse_constant
_.memo

# -- kept alive for C ---------------------------------------------------------------------------
_.init_handler  # runtime/sqfs_server.py: the ctypes callback libfuse calls; dropped, it is freed

# -- the library the tests and benches use (src/satchel is their one import path) ----------------
# oci/writer.py: the tests' and benches' OCI image maker (layers real tools would not write)
_.host_file
_.hardlink
_.fifo
_.whiteout
_.opaque
_.tar_bytes
_.compress_layer
_.write_layout  # oci/writer.py and build/layout.py (prepare + finish for a bare rootfs)
_.download  # oci/source.py: the download phase alone, for bench/pull_bench.py
_.native_entries  # hpc/ldcache.py: the host's own libraries, tests/unit/test_gpu.py
_.start_builtin  # runtime/fuse.py: fork + serve at once, tests/integration/test_runtime_prefetch.py
_.twin_log_dir  # instance/state.py: the ~/.singularity log twin, tests/unit/test_compat_instance.py
_.whiteouts  # oci/layers.py Stats: counted per layer, asserted by tests/unit/test_oci_layers.py

# -- in progress elsewhere: the owner uses or removes it -----------------------------------------
_.RLIMITS  # ocirt/ops.py (issue 16): the rlimit names config.json may give
