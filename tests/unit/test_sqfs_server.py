"""runtime/sqfs_server.py and cfunc.py pieces that run without a mount: the FUSE INIT handler,
C callbacks into Python, the image message."""

import struct

import _ctypes

from satchel.runtime import cfunc, sqfs_server


def _conn(capable: int, want: int):
    # struct fuse_conn_info: proto_major, proto_minor, max_write, max_read, max_readahead,
    # capable, want, max_background, congestion_threshold, time_gran, reserved[22]
    return cfunc.char_buffer(128, struct.pack("=10I", 7, 31, 0, 0, 0, capable, want, 0, 0, 0))


def _want(conn) -> int:
    return struct.unpack_from("=I", conn.raw, 24)[0]


def test_init_asks_for_cached_symlinks_only_when_the_kernel_offers_them():
    flag = sqfs_server.FUSE_CAP_CACHE_SYMLINKS
    offered = _conn(capable=0xFFFFFFFF, want=0x5)
    sqfs_server._init(None, cfunc.address_of(offered))
    assert _want(offered) == 0x5 | flag
    refused = _conn(capable=0xFFFFFFFF & ~flag, want=0x5)
    sqfs_server._init(None, cfunc.address_of(refused))
    assert _want(refused) == 0x5  # asking for more than capable aborts the mount in libfuse


def test_callback_is_callable_from_c_through_its_address():
    seen = []
    keep, address = cfunc.callback(lambda a, b: seen.append((a, b)),
                                   (cfunc.c_void_p, cfunc.c_void_p))
    assert keep is not None and address

    class Caller(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL
        _restype_ = None
        _argtypes_ = (cfunc.c_void_p, cfunc.c_void_p)

    Caller(address)(7, None)
    assert seen == [(7, None)]


def test_image_message_round_trip():
    import os

    from satchel.runtime import fuse

    read_fd, write_fd = os.pipe()
    try:
        server = fuse.BuiltinServer("image", 0, write_fd, -1)
        image = "/images/with space/\u00e9t\u00e9\nnewline.sif"
        server.serve_image(image, 36864, ["squashfuse_ll", "-f", "/dev/fd/{fd}"],
                           ("/bin/sh", "/opt/app x"))
        assert (server.image, server.offset) == (image, 36864)
        assert sqfs_server._read_image_message(read_fd) == (
            image, 36864, ["squashfuse_ll", "-f", "/dev/fd/{fd}"], ["/bin/sh", "/opt/app x"])
        server.serve_image(image, 0, ["p"], ())
        assert sqfs_server._read_image_message(read_fd) == (image, 0, ["p"], [])
        os.close(write_fd)
        write_fd = -1
        assert sqfs_server._read_image_message(read_fd) is None  # the launcher gave up
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _server_that_dies(how: str) -> int:
    """The read end of a life pipe whose writer, a forked child, dies `how` (issue 10)."""
    import faulthandler
    import os
    import signal
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if how == "abort":
            faulthandler.enable(file=write, all_threads=False)  # as run_daemon does
            os.abort()
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    return read


def test_a_dead_server_is_named_with_what_killed_it():
    """The life pipe ends when the server dies; faulthandler's report names the signal."""
    import os

    from satchel.errors import ContainerError
    from satchel.runtime import fuse
    for how, why in (("abort", " (Aborted)"), ("kill", "")):
        server = fuse.BuiltinServer("image", 0, -1, -1, _server_that_dies(how))
        server.image = "/x/img.sif"
        err = server.died_error(1000)
        assert isinstance(err, ContainerError)
        assert str(err) == f"the SquashFS server for /x/img.sif died{why}: the image may be corrupt"
        os.close(server.life_fd)


def test_a_live_server_leaves_the_error_alone():
    import os

    from satchel.errors import ContainerError
    from satchel.runtime import fuse
    read, write = os.pipe()
    server = fuse.FuseServer("image", -1, 0, -1, -1, ["squashfuse_ll", "img", "/dev/fd/3"], read)
    err = ContainerError("path /proc in the container: Input/output error")
    assert fuse.explain_failure([server], err) is err  # waited 1 s at most: it is alive
    os.close(write)
    died = fuse.explain_failure([server], err)
    assert str(died) == "the SquashFS server for img (squashfuse_ll) died: the image may be corrupt"
    os.close(read)
