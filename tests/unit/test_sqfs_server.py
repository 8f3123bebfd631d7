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
