"""The executor, with the OCI operations (ocirt/plan.py's OCI_* kinds) added as op_ methods.

Not a second runtime: runtime/executor.Executor walks the plan, resolves container paths
through descriptors and performs every shared operation; this subclass only maps the OCI
kinds to ocirt/ops.py and honours two flags on shared kinds (BIND_IMAGE_DIR "owned", EXEC
"lookup"). Kept beside the executor rather than in it while runtime/ is being restructured.
"""

from __future__ import annotations

import os

from satchel import fsutil
from satchel.errors import ContainerError
from satchel.ocirt import ops
from satchel.runtime import executor as base


class Executor(base.Executor):
    def op_oci_sync(self, op) -> None:
        ops.sync(self, op)

    def op_oci_setns(self, op) -> None:
        ops.setns_path(self, op)

    def op_oci_fork(self, op) -> None:
        ops.fork(self, op)

    def op_oci_mount(self, op) -> None:
        ops.mount(self, op)

    def op_oci_device(self, op) -> None:
        ops.device(self, op)

    def op_oci_console(self, op) -> None:
        ops.console(self, op)

    def op_oci_wait_start(self, op) -> None:
        ops.wait_start(self, op)

    def op_oci_process(self, op) -> None:
        ops.process(self, op)

    def op_oci_seccomp(self, op) -> None:
        ops.seccomp_late(self, op)

    def _missing(self, op) -> bool:
        """Whether a maskedPaths/readonlyPaths entry is absent when its turn comes (an earlier
        mask can hide it: /a masked, then /a/b): runc skips those, and so do we."""
        if "if_exists" not in op.flags:
            return False
        found = fsutil.resolve_at(self._root_fd(), op.destination)
        self.held.append(found.fd)
        return bool(found.missing)

    def op_mask_path(self, op) -> None:
        if not self._missing(op):
            super().op_mask_path(op)

    def op_readonly_path(self, op) -> None:
        if not self._missing(op):
            super().op_readonly_path(op)

    def op_bind_image_dir(self, op) -> None:
        super().op_bind_image_dir(op)
        if "owned" in op.flags:  # the bundle's rootfs: mount points are made in it directly
            self.underlays.own_devices.add(os.stat(op.destination).st_dev)

    def op_exec(self, op) -> None:
        path = op.source
        environ = self.plan.environ
        if "lookup" in op.flags:
            path = ops.find_program(op.source, environ)
        if "HOME" not in environ:
            environ = dict(environ, HOME=ops.home_of(os.getuid()))
        try:
            os.execve(path, self.plan.argv, environ)
        except OSError as err:
            raise ContainerError(f"executing {op.source} in the container: "
                                 f"{err.strerror}") from None


def apply(plan) -> None:
    """Build the container and exec its process (does not return on success)."""
    Executor(plan).run()
