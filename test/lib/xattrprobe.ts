/** A python3 script (ctypes, raw syscalls with caller-chosen buffer sizes) that probes a file's xattrs through a
 *  mount: prints one JSON object of results (a length, or an errno name). */
export const XATTR_PROBE_PY = String.raw`
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.lgetxattr.restype = ctypes.c_ssize_t
libc.llistxattr.restype = ctypes.c_ssize_t
libc.lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.llistxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
p = sys.argv[1].encode()
def res(n, buf=None):
    if n < 0:
        return errno.errorcode[ctypes.get_errno()]
    return [n, bytes(buf.raw[:n]).hex()] if buf is not None else n
def get(name, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    return res(libc.lgetxattr(p, name.encode(), buf if size else None, size), buf if size else None)
def lst(size):
    buf = ctypes.create_string_buffer(max(size, 1))
    return res(libc.llistxattr(p, buf if size else None, size), buf if size else None)
out = {}
for spec in sys.argv[2:]:
    kind, name, size = spec.split(':')
    out[spec] = get(name, int(size)) if kind == 'get' else lst(int(size))
print(json.dumps(out))
`;
