/** A python3 script run with its cwd in a mount: every call of pjdfstest's PATH_MAX checks on paths of PATH_MAX - 1
 *  bytes relative to the cwd (dirs of 100 bytes, then a name to fill up); prints {op: 'ok' | errno name}. */
export const PATHMAX_PY = String.raw`
import errno, json, os
comp = 'd' * 100
parts = []
while (len(parts) + 1) * 101 + 101 < 4095:
    parts.append(comp)
d = '/'.join(parts)
def name(c):
    return d + '/' + c * (4095 - len(d) - 1)
p, q, s, t = name('f'), name('g'), name('s'), name('t')
assert len(p.encode()) == 4095
out = {}
def do(op, f):
    try:
        f()
        out[op] = 'ok'
    except OSError as e:
        out[op] = errno.errorcode[e.errno]
do('mkdir -p', lambda: os.makedirs(d))
do('open O_CREAT', lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)))
do('write', lambda: open(p, 'w').write('data'))
do('stat', lambda: os.stat(p))
do('chmod', lambda: os.chmod(p, 0o600))
do('chown', lambda: os.chown(p, 1, 2))
do('truncate', lambda: os.truncate(p, 2))
do('link', lambda: os.link(p, q))
do('symlink', lambda: os.symlink('target', s))
do('rename', lambda: os.rename(q, t))
do('unlink', lambda: (os.unlink(t), os.unlink(s), os.unlink(p)))
do('mknod', lambda: os.mknod(p, 0o644 | 0o10000))
do('unlink fifo', lambda: os.unlink(p))
do('mkdir', lambda: os.mkdir(p))
do('rmdir', lambda: os.rmdir(p))
print(json.dumps(out))
`;
