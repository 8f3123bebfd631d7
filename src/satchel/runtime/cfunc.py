"""The few ctypes pieces the runtime needs, built on the _ctypes extension directly.

`import ctypes` costs ~7 ms on the machines we measure (its __init__ defines dozens of types,
the endianness helpers, the loaders); `import _ctypes`, the C extension under it, ~1 ms. The
launcher calls a dozen libc functions with ints, strings and small buffers, so it defines just
those C types here, the same way ctypes does (subclasses of _ctypes._SimpleCData with a
`_type_` code), and function pointers with use_errno semantics. Keep this module tiny; code
that would need structures or callbacks should pack them with struct into char_buffer()s,
as sqfs_server.py does for libfuse's.
"""

from __future__ import annotations

import _ctypes
import os
import sys

get_errno = _ctypes.get_errno


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_uint(_ctypes._SimpleCData):
    _type_ = "I"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class c_char(_ctypes._SimpleCData):
    _type_ = "c"


class c_char_p(_ctypes._SimpleCData):
    _type_ = "z"


class c_void_p(_ctypes._SimpleCData):
    _type_ = "P"


c_size_t = c_ulong  # LP64: every Linux the runtime supports


class _Function(_ctypes.CFuncPtr):
    """A C function called with errno saved for get_errno() (ctypes' use_errno=True)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class Library:
    """A loaded shared object (None: the program itself, i.e. libc's symbols)."""

    def __init__(self, name: str | None = None):
        self._handle = _ctypes.dlopen(name, os.RTLD_LOCAL)

    def address(self, name: str) -> int:
        """The address of a symbol (OSError if the library has none by that name)."""
        return _ctypes.dlsym(self._handle, name)

    def function(self, name: str, argtypes=None, restype=c_int):
        func = _Function((name, self))
        if argtypes is not None:
            func.argtypes = tuple(argtypes)
        func.restype = restype
        return func


_ARRAY_TYPES: dict = {}  # size -> char[size] type: making a type costs ~40 us, an instance ~1


def char_buffer(size: int, content: bytes = b""):
    """A writable char[size], zeroed then filled with content (pass it as a pointer)."""
    array_type = _ARRAY_TYPES.get(size)
    if array_type is None:
        array_type = _ARRAY_TYPES[size] = type(f"c_char_Array_{size}", (_ctypes.Array,),
                                               {"_type_": c_char, "_length_": size})
    buffer = array_type()
    if content:
        buffer.raw = content + bytes(size - len(content))
    return buffer


address_of = _ctypes.addressof  # address of a buffer's memory


def callback(function, argtypes, restype=None):
    """A C function pointer calling the Python `function` (ctypes' CFUNCTYPE(...)(function)).

    Returns (keep, address): C code may call `address` as long as `keep` is referenced.
    """
    thunk_type = type("_Callback", (_ctypes.CFuncPtr,), {
        "_flags_": _ctypes.FUNCFLAG_CDECL, "_restype_": restype, "_argtypes_": tuple(argtypes)})
    keep = thunk_type(function)
    return keep, int.from_bytes(memoryview(keep).tobytes(), sys.byteorder)
