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


def _handlers():
    return sqfs_server.Handlers(cfunc.Library(sqfs_server.LIBSQUASHFUSE),
                                cfunc.Library(sqfs_server.LIBFUSE))


def test_init_asks_only_for_what_the_kernel_offers():
    handlers = _handlers()
    ours = (sqfs_server.FUSE_CAP_CACHE_SYMLINKS | sqfs_server.FUSE_CAP_NO_OPEN_SUPPORT |
            sqfs_server.FUSE_CAP_NO_OPENDIR_SUPPORT)
    offered = _conn(capable=0xFFFFFFFF, want=0x5)
    handlers.init(None, cfunc.address_of(offered))
    assert _want(offered) == 0x5 | ours
    assert handlers.want == 0x5 | ours  # open/opendir answer ENOSYS from now on
    refused = _conn(capable=0xFFFFFFFF & ~ours, want=0x5)
    handlers.init(None, cfunc.address_of(refused))
    assert _want(refused) == 0x5  # asking for more than capable aborts the mount in libfuse
    assert not handlers.want & sqfs_server.FUSE_CAP_NO_OPEN_SUPPORT  # libsquashfuse's OPEN


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


def test_protocol_messages_round_trip():
    """fuse_protocol.py is the one description of the pipe messages both sides use."""
    from satchel.runtime import fuse_protocol as proto

    message = proto.encode_image("/i.sif", 4096, ["squashfuse_ll", "/dev/fd/{fd}"], ["/bin/sh"])
    assert message[:1] == proto.IMAGE and proto.image_size(message) == len(message)
    assert proto.image_size(message[:3]) is None
    assert proto.decode_image(message) == ("/i.sif", 4096, ["squashfuse_ll", "/dev/fd/{fd}"],
                                           ["/bin/sh"])
    assert proto.parse_mounted(proto.mounted_message(123, 7)) == (123, 7)
    assert proto.mounted_message(123, 7) == b"x 123 7\n"
    import pytest
    with pytest.raises(ValueError):
        proto.parse_mounted(b"y 1 2\n")
    assert proto.error_message("a\nb" + "x" * 500)[:5] == b"ea bx"
    assert len(proto.error_message("x" * 500)) == 1 + 400 + 1
    letters = [proto.IMAGE, proto.MOUNTED, proto.STORE, proto.OPENED, proto.SERVING,
               proto.LISTED, proto.ERROR]
    assert len(set(letters)) == len(letters)  # one meaning per letter on each pipe


def test_a_read_ahead_that_failed_fails_the_launch_loudly():
    """The read-ahead thread sends ERROR instead of its listing: the launcher says so in one
    error (it used to go on silently)."""
    import os

    import pytest

    from satchel.errors import ContainerError
    from satchel.runtime import fuse, fuse_protocol as proto
    go_read, go_write = os.pipe()
    ack_read, ack_write = os.pipe()
    life_read, life_write = os.pipe()
    server = fuse.BuiltinServer("image", 0, go_write, ack_read, life_read)
    server.image, server.reads_ahead = "/x/img.sif", True
    os.write(ack_write, proto.error_message("reading ahead: ValueError: bad ELF header"))
    try:
        with pytest.raises(ContainerError, match="the SquashFS server for /x/img.sif failed "
                                                 "reading ahead: ValueError: bad ELF header"):
            server.store_read_ahead(lambda path: None)
        assert os.read(go_read, 16) == b""  # nothing stored, its pipes closed
    finally:
        for fd in (go_read, ack_write, life_read, life_write):
            os.close(fd)
