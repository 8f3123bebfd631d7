"""--sharens (Apptainer: share the namespaces of the containers one parent starts): the later
launches of the same parent and image join the first one's user and mount namespaces; another
parent's launch gets its own (runtime/share.py), as the real non-root user."""

from __future__ import annotations

import subprocess
import time

from support.fixtures_share import TIMEOUT, finish_all
from support.fixtures_users import SATCHEL

class NsContainer:
    """`satchel exec --sharens` printing its namespaces, held until a line on stdin."""

    def __init__(self, user, image: str, via_shell: bool = False):
        argv = [SATCHEL, "exec", "--sharens", image, "sh", "-c",
                "readlink /proc/self/ns/mnt; readlink /proc/self/ns/user; read line; echo ok"]
        if via_shell:  # another parent: sh forks satchel
            argv = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + "; true"]
        self.proc = subprocess.Popen(user.argv(argv), env=user.env(), cwd="/tmp",
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def namespaces(self) -> tuple[str, str]:
        lines = (self.proc.stdout.readline().decode().strip(),
                 self.proc.stdout.readline().decode().strip())
        assert all(line.startswith(("mnt:", "user:")) for line in lines), \
            self.proc.stderr.read1(4000).decode(errors="replace")
        return lines

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def finish(self, deadline: float) -> None:
        assert self.proc.stdout.readline().decode().strip() == "ok"
        assert self.proc.wait(timeout=max(1, deadline - time.monotonic())) == 0


def test_sharens_joins_the_first_container_of_the_same_parent(test_user, share_sif):
    """Three launches with --sharens from this process share one mount and user namespace;
    one started by another parent (a shell) has its own."""
    first = NsContainer(test_user, share_sif)
    containers = [first]
    try:
        first_ns = first.namespaces()
        for _ in range(2):
            containers.append(NsContainer(test_user, share_sif))
            assert containers[-1].namespaces() == first_ns
        other = NsContainer(test_user, share_sif, via_shell=True)
        containers.append(other)
        other_ns = other.namespaces()
        assert other_ns[0] != first_ns[0] and other_ns[1] != first_ns[1]
    finally:
        finish_all(containers)
