/** A python3 script: open(O_WRONLY) of MNT/f, then what can be seen before the first write (st_ino/st_dev, a second
 *  flock, whether UPPER/f exists), then the write; prints the outcomes as JSON. */
export const ZERO_OPEN_PY = String.raw`
import fcntl, json, os, sys, errno
m = sys.argv[1]
out = {}
p = os.path.join(m, 'f')
st0 = os.lstat(p)
try:
    fd = os.open(p, os.O_WRONLY)
    out['open'] = 'ok'
except OSError as e:
    out['open'] = errno.errorcode[e.errno]; fd = None
st1 = os.lstat(p)
out['same ino/dev after open'] = (st0.st_ino, st0.st_dev) == (st1.st_ino, st1.st_dev)
out['upper copy after open'] = os.path.exists(os.path.join(sys.argv[2], 'f'))
if fd is not None:
    fcntl.flock(fd, fcntl.LOCK_EX)
    fd2 = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB); out['second flock'] = 'ok'
    except OSError as e:
        out['second flock'] = errno.errorcode[e.errno]
    os.close(fd2)
    try:
        os.write(fd, b'x'); out['write'] = 'ok'
    except OSError as e:
        out['write'] = errno.errorcode[e.errno]
    os.close(fd)
st2 = os.lstat(p)
out['same ino/dev after write'] = (st0.st_ino, st0.st_dev) == (st2.st_ino, st2.st_dev)
pass
print(json.dumps(out))
`;
