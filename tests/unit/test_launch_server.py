"""launch.start_server and the early server plan_launch tells its image before the plan is
built: a real built-in server process (fuse.fork_builtin), never mounted; cancelled at the end
(it exits at the end of its pipe, so nothing is left)."""

import os

from satchel.runtime import fuse, launch
from satchel.runtime.plan import ServerStart

IMAGE = "/nonexistent/image.sif"  # never opened: the server waits for MOUNTED, then exits


class _Plan:
    """The one field start_server reads (ContainerPlan.server)."""

    def __init__(self, server):
        self.server = server


def _wanted(reads=("/bin/sh",)) -> ServerStart:
    return ServerStart(IMAGE, 4096, ("squashfuse_ll", "-f", "/dev/fd/{fd}"), reads)


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped: cancel() waits for the middle process
    return False


def test_a_server_told_what_the_plan_says_is_adopted_as_it_is():
    wanted = _wanted()
    early = fuse.fork_builtin("image")
    try:
        early.serve_image(wanted.image, wanted.offset, wanted.fallback_argv, wanted.reads)
        told = early.told
        server = launch.start_server(_Plan(wanted), early)
        assert server is early
        assert server.told == told == (IMAGE, 4096, wanted.fallback_argv, ("/bin/sh",))
    finally:
        early.cancel()
    assert _gone(early.pid)


def test_a_server_told_otherwise_is_cancelled_and_a_new_one_told_the_plan():
    wanted = _wanted()
    early = fuse.fork_builtin("image")
    early.serve_image(IMAGE, 4096, wanted.fallback_argv, ("/bin/other",))
    server = launch.start_server(_Plan(wanted), early)
    try:
        assert server is not early
        assert _gone(early.pid) and early.go_fd == -1  # cancelled: its pipe closed
        assert server.told == (IMAGE, 4096, wanted.fallback_argv, ("/bin/sh",))
    finally:
        server.cancel()


def test_an_untold_early_server_is_told_the_plan():
    wanted = _wanted(reads=())
    early = fuse.fork_builtin("image")
    try:
        assert early.told is None
        server = launch.start_server(_Plan(wanted), early)
        assert server is early and server.told == (IMAGE, 4096, wanted.fallback_argv, ())
    finally:
        early.cancel()


def test_no_server_in_the_plan_cancels_the_early_one():
    early = fuse.fork_builtin("image")
    assert launch.start_server(_Plan(None), early) is None
    assert _gone(early.pid)
