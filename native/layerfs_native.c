/*
 * The few syscalls Node does not expose and an overlay store needs:
 * mknod (whiteouts, device nodes), the l*xattr family (opaque dirs, PAX xattrs,
 * FUSE xattr ops), and renameat2 (RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT).
 * Every function is synchronous and throws an Error carrying `code` (e.g. "ENODATA")
 * and `errno`, like Node's own fs errors.
 * For the direct FUSE transport also a readiness watcher on a file descriptor (a libuv poll handle on the JS
 * thread's loop) and a read that returns -errno instead of throwing: /dev/fuse is read on the JS thread when it
 * is readable, with no threadpool thread and no thread switch between the kernel and the code that answers.
 * And the FUSE passthrough ioctls (FUSE_DEV_IOC_BACKING_OPEN / _CLOSE) on that /dev/fuse fd.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <uv.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <linux/fuse.h>

/* FUSE passthrough (kernel 6.9+, protocol 7.40): register a backing file with the connection (an id the OPEN reply
   names with FOPEN_PASSTHROUGH), and unregister it. Older uapi headers (Debian 12's are 7.38) lack them. */
#ifndef FUSE_DEV_IOC_BACKING_OPEN
struct fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
#endif

#define PATH_BUF 4352
#define NAME_BUF 512

static const char *errno_name(int e) {
  switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EIO) E(EBADF) E(EACCES) E(EEXIST) E(EXDEV) E(ENOTDIR) E(EISDIR)
    E(EINVAL) E(ENOSPC) E(EROFS) E(EMLINK) E(ERANGE) E(ENAMETOOLONG) E(ENOTEMPTY) E(ENOSYS)
    E(ENODATA) E(ENOTSUP) E(EDQUOT) E(E2BIG) E(ELOOP) E(EBUSY) E(EFAULT) E(ENOMEM)
    E(ENXIO) E(ESPIPE) E(EFBIG) E(EOVERFLOW) E(ETXTBSY) E(EINTR) E(EAGAIN) E(ENODEV)
    E(ENOTTY) E(EMFILE) E(ENFILE) E(ESTALE)
#undef E
    default: return "EUNKNOWN";
  }
}

static napi_value throw_errno(napi_env env, int e, const char *syscall, const char *path) {
  char msg[PATH_BUF + 128];
  snprintf(msg, sizeof msg, "%s: %s, %s '%s'", errno_name(e), strerror(e), syscall, path ? path : "");
  napi_value code, message, err, errnum, sc;
  napi_create_string_utf8(env, errno_name(e), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &err);
  napi_create_int32(env, -e, &errnum);
  napi_set_named_property(env, err, "errno", errnum);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, err, "syscall", sc);
  if (path) {
    napi_value p;
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, err, "path", p);
  }
  napi_throw(env, err);
  return NULL;
}

/* A path or name: a JS string (UTF-8) or a Buffer (its bytes as they are: Linux names are bytes). */
static int get_str(napi_env env, napi_value v, char *buf, size_t len) {
  size_t n;
  bool isbuf = false;
  if (napi_is_buffer(env, v, &isbuf) == napi_ok && isbuf) {
    void *data;
    if (napi_get_buffer_info(env, v, &data, &n) != napi_ok) return -1;
    if (n >= len - 1 || memchr(data, 0, n) != NULL) return -1;
    memcpy(buf, data, n);
    buf[n] = 0;
    return 0;
  }
  if (napi_get_value_string_utf8(env, v, buf, len, &n) != napi_ok) return -1;
  if (n >= len - 1) return -1;
  return 0;
}

#define ARGS(N)                                                   \
  size_t argc = N;                                                \
  napi_value argv[N];                                             \
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);           \
  if (argc < N) {                                                 \
    napi_throw_type_error(env, NULL, "wrong number of arguments"); \
    return NULL;                                                  \
  }

/* A string argument; one too long for its buffer fails as the syscall would: ERANGE for an xattr name (NAME_BUF),
   ENAMETOOLONG for a path. */
#define STR(i, buf)                                               \
  if (get_str(env, argv[i], buf, sizeof buf) != 0) {              \
    napi_valuetype t_;                                            \
    napi_typeof(env, argv[i], &t_);                               \
    if (t_ == napi_string) return throw_errno(env, sizeof buf == NAME_BUF ? ERANGE : ENAMETOOLONG, "argument", NULL); \
    napi_throw_type_error(env, NULL, "expected a string");        \
    return NULL;                                                  \
  }

/* mknod(path, mode, major, minor) */
static napi_value n_mknod(napi_env env, napi_callback_info info) {
  ARGS(4);
  char path[PATH_BUF];
  STR(0, path);
  uint32_t mode, maj, min;
  napi_get_value_uint32(env, argv[1], &mode);
  napi_get_value_uint32(env, argv[2], &maj);
  napi_get_value_uint32(env, argv[3], &min);
  if (mknod(path, (mode_t)mode, makedev(maj, min)) != 0) return throw_errno(env, errno, "mknod", path);
  return NULL;
}

/* lsetxattr(path, name, value: Buffer, flags) */
static napi_value n_lsetxattr(napi_env env, napi_callback_info info) {
  ARGS(4);
  char path[PATH_BUF], name[NAME_BUF];
  STR(0, path);
  STR(1, name);
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "value must be a Buffer");
    return NULL;
  }
  int32_t flags;
  napi_get_value_int32(env, argv[3], &flags);
  if (lsetxattr(path, name, data, len, flags) != 0) return throw_errno(env, errno, "lsetxattr", path);
  return NULL;
}

/* lgetxattr(path, name) -> Buffer (throws ENODATA when absent) */
static napi_value n_lgetxattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  char path[PATH_BUF], name[NAME_BUF];
  STR(0, path);
  STR(1, name);
  char small[256];
  ssize_t n = lgetxattr(path, name, small, sizeof small);
  napi_value out;
  if (n >= 0) {
    void *dst;
    napi_create_buffer_copy(env, (size_t)n, small, &dst, &out);
    return out;
  }
  if (errno != ERANGE) return throw_errno(env, errno, "lgetxattr", path);
  for (;;) {
    ssize_t want = lgetxattr(path, name, NULL, 0);
    if (want < 0) return throw_errno(env, errno, "lgetxattr", path);
    char *buf = malloc((size_t)want + 1);
    if (!buf) return throw_errno(env, ENOMEM, "lgetxattr", path);
    n = lgetxattr(path, name, buf, (size_t)want);
    if (n >= 0) {
      void *dst;
      napi_create_buffer_copy(env, (size_t)n, buf, &dst, &out);
      free(buf);
      return out;
    }
    free(buf);
    if (errno != ERANGE) return throw_errno(env, errno, "lgetxattr", path);
  }
}

/* llistxattr(path) -> string[] */
static napi_value n_llistxattr(napi_env env, napi_callback_info info) {
  ARGS(1);
  char path[PATH_BUF];
  STR(0, path);
  char *buf = NULL;
  ssize_t n;
  for (;;) {
    ssize_t want = llistxattr(path, NULL, 0);
    if (want < 0) return throw_errno(env, errno, "llistxattr", path);
    free(buf);
    buf = malloc((size_t)want + 1);
    if (!buf) return throw_errno(env, ENOMEM, "llistxattr", path);
    n = llistxattr(path, buf, (size_t)want);
    if (n >= 0) break;
    if (errno != ERANGE) {
      int e = errno;
      free(buf);
      return throw_errno(env, e, "llistxattr", path);
    }
  }
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t idx = 0;
  for (ssize_t off = 0; off < n;) {
    size_t l = strlen(buf + off);
    if (l > 0) {
      napi_value s;
      napi_create_string_utf8(env, buf + off, l, &s);
      napi_set_element(env, arr, idx++, s);
    }
    off += (ssize_t)l + 1;
  }
  free(buf);
  return arr;
}

/* lremovexattr(path, name) */
static napi_value n_lremovexattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  char path[PATH_BUF], name[NAME_BUF];
  STR(0, path);
  STR(1, name);
  if (lremovexattr(path, name) != 0) return throw_errno(env, errno, "lremovexattr", path);
  return NULL;
}

/* renameat2(oldpath, newpath, flags) with AT_FDCWD */
static napi_value n_renameat2(napi_env env, napi_callback_info info) {
  ARGS(3);
  char from[PATH_BUF], to[PATH_BUF];
  STR(0, from);
  STR(1, to);
  uint32_t flags;
  napi_get_value_uint32(env, argv[2], &flags);
  if (syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags) != 0) return throw_errno(env, errno, "renameat2", from);
  return NULL;
}

/* An offset or length argument: a JS number holding an integer 0 <= v < 2^53. */
static int get_off(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) {
    napi_throw_range_error(env, NULL, "expected an integer offset/length in [0, 2^53)");
    return -1;
  }
  *out = (int64_t)d;
  return 0;
}

static int get_fd(napi_env env, napi_value v, int32_t *out) {
  if (napi_get_value_int32(env, v, out) != napi_ok || *out < 0) {
    napi_throw_type_error(env, NULL, "expected an fd");
    return -1;
  }
  return 0;
}

/* fallocate(fd, mode, offset, length): mode bits as fallocate(2) (KEEP_SIZE 1, PUNCH_HOLE 2, ZERO_RANGE 16...). */
static napi_value n_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  uint32_t mode;
  int64_t off, len;
  if (get_fd(env, argv[0], &fd) || get_off(env, argv[2], &off) || get_off(env, argv[3], &len)) return NULL;
  napi_get_value_uint32(env, argv[1], &mode);
  int r;
  do r = fallocate(fd, (int)mode, (off_t)off, (off_t)len); while (r != 0 && errno == EINTR);
  if (r != 0) return throw_errno(env, errno, "fallocate", NULL);
  return NULL;
}

/* lseek(fd, offset, whence) -> the new offset (whence SEEK_DATA 3 / SEEK_HOLE 4 too; ENXIO past the data). */
static napi_value n_lseek(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, whence;
  int64_t off;
  if (get_fd(env, argv[0], &fd) || get_off(env, argv[1], &off)) return NULL;
  napi_get_value_int32(env, argv[2], &whence);
  off_t r = lseek(fd, (off_t)off, whence);
  if (r < 0) return throw_errno(env, errno, "lseek", NULL);
  napi_value out;
  napi_create_double(env, (double)r, &out);
  return out;
}

/* copyFileRange(fdIn, offIn, fdOut, offOut, len, flags) -> bytes copied (0 at the end of the input). Explicit
   offsets: the fds' own positions are neither used nor moved. */
static napi_value n_copy_file_range(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t fin, fout;
  int64_t oin, oout, len;
  uint32_t flags;
  if (get_fd(env, argv[0], &fin) || get_off(env, argv[1], &oin) || get_fd(env, argv[2], &fout) ||
      get_off(env, argv[3], &oout) || get_off(env, argv[4], &len))
    return NULL;
  napi_get_value_uint32(env, argv[5], &flags);
  loff_t li = (loff_t)oin, lo = (loff_t)oout;
  ssize_t n;
  do n = copy_file_range(fin, &li, fout, &lo, (size_t)len, flags); while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, errno, "copy_file_range", NULL);
  napi_value out;
  napi_create_double(env, (double)n, &out);
  return out;
}

/* willNeed(path, len) -> bool: open path, ask the kernel to read its first len bytes into the page cache
   (POSIX_FADV_WILLNEED: the reads are queued, not waited for), close. false when the file cannot be opened. */
static napi_value n_will_need(napi_env env, napi_callback_info info) {
  ARGS(2);
  char path[PATH_BUF];
  STR(0, path);
  int64_t len;
  if (get_off(env, argv[1], &len)) return NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0) {
    posix_fadvise(fd, 0, (off_t)len, POSIX_FADV_WILLNEED);
    close(fd);
  }
  napi_value out;
  napi_get_boolean(env, fd >= 0, &out);
  return out;
}

/* dtypeSupported(dir) -> bool: does readdir report d_type here (overlay needs it)? `dir` must hold an entry. */
#include <dirent.h>
static napi_value n_dtype_supported(napi_env env, napi_callback_info info) {
  ARGS(1);
  char path[PATH_BUF];
  STR(0, path);
  DIR *d = opendir(path);
  if (!d) return throw_errno(env, errno, "opendir", path);
  int known = 0, seen = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    seen++;
    if (e->d_type != DT_UNKNOWN) known++;
  }
  closedir(d);
  napi_value out;
  napi_get_boolean(env, seen > 0 && known == seen, &out);
  return out;
}

/* ---- fd readiness on the JS thread's loop (direct FUSE transport) ---- */
typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref cb;
  napi_async_context ctx;
  int closing;
  int fd;
  int spin_us; /* after a wake-up, keep polling the fd this long before sleeping again (0: never) */
  napi_ref busy_ref; /* an Int32Array: polling only while its [0] is 0 (nothing in flight: no other wake-up due) */
  int32_t *busy;
} fd_watch;

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Microseconds of this thread's CPU spent polling in watch_fired, all watchers: the CPU the polling costs, so that
   the CPU a server spends per request can be told apart from it (spinUs()). JS thread only. */
static int64_t spin_total_us = 0;
static int yield_spin = -1;

static void watch_closed(uv_handle_t *h) {
  fd_watch *w = (fd_watch *)h->data;
  if (w->busy_ref) napi_delete_reference(w->env, w->busy_ref);
  free(w);
}

static void watch_fired(uv_poll_t *h, int status, int events) {
  fd_watch *w = (fd_watch *)h->data;
  if (w->closing) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv, arg, result;
  napi_get_reference_value(env, w->cb, &cb);
  napi_get_global(env, &recv); /* make_callback needs an object as `this` */
  for (;;) {
    napi_create_int32(env, status, &arg);
    /* make_callback: microtasks (promise reactions: the replies) run when the callback returns */
    if (napi_make_callback(env, w->ctx, recv, cb, 1, &arg, &result) == napi_pending_exception) {
      napi_value err; /* a throw in the callback: the process's uncaughtException, as for any other callback */
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
      break;
    }
    if (w->closing || w->spin_us <= 0 || status < 0 || (w->busy && *w->busy != 0)) break;
    /* a request often follows its reply within microseconds (the caller's next syscall): waiting for it here
       saves the sleep and wake-up of the loop, which on a VM costs more than the request */
    int64_t start = mono_us(), until = start + w->spin_us, cpu0 = thread_cpu_us();
    int ready = 0;
    struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
    while (!ready && mono_us() < until) {
      if (yield_spin) sched_yield(); /* first: a caller our reply just woke runs before we look for its next request */
      ready = poll(&pfd, 1, 0) > 0;
    }
    /* this thread's CPU, not the wall time: while we yield, the caller runs (that time is not ours) */
    spin_total_us += thread_cpu_us() - cpu0;
    if (!ready) break;
    status = 0;
  }
  napi_close_handle_scope(env, scope);
  (void)events;
}

/* watchReadable(fd, cb(status), spinUs = 0, busy?: Int32Array) -> handle: cb runs on the JS thread whenever fd is
   readable; after each run, while busy[0] is 0, the fd is polled without sleeping for up to spinUs microseconds and cb
   runs again if it became readable. */
static napi_value n_watch_readable(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected an fd");
    return NULL;
  }
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    napi_throw_error(env, NULL, "no event loop");
    return NULL;
  }
  int32_t spin = 0;
  int32_t *busy = NULL;
  if (argc > 2) napi_get_value_int32(env, argv[2], &spin);
  if (argc > 3) {
    napi_typedarray_type t;
    size_t len;
    void *data;
    if (napi_get_typedarray_info(env, argv[3], &t, &len, &data, NULL, NULL) != napi_ok || t != napi_int32_array || len < 1) {
      napi_throw_type_error(env, NULL, "expected an Int32Array");
      return NULL;
    }
    busy = data;
  }
  fd_watch *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "watchReadable", NULL);
  w->env = env;
  w->fd = fd;
  w->spin_us = spin;
  if (yield_spin < 0) {
    const char *e = getenv("LAYERFS_FUSE_SPIN_YIELD");
    yield_spin = e ? atoi(e) : 1;
  }
  if (busy) {
    w->busy = busy;
    napi_create_reference(env, argv[3], 1, &w->busy_ref);
  }
  napi_create_reference(env, argv[1], 1, &w->cb);
  napi_value name;
  napi_create_string_utf8(env, "layerfs:fuse", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->ctx);
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r == 0) {
    w->poll.data = w;
    r = uv_poll_start(&w->poll, UV_READABLE, watch_fired);
  }
  if (r != 0) {
    napi_delete_reference(env, w->cb);
    napi_async_destroy(env, w->ctx);
    free(w);
    return throw_errno(env, -r, "uv_poll", NULL);
  }
  napi_value ext;
  napi_create_external(env, w, NULL, NULL, &ext);
  return ext;
}

/* spinUs() -> number: microseconds spent polling after wake-ups so far (all watchers). */
static napi_value n_spin_us(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_double(env, (double)spin_total_us, &out);
  return out;
}

/* unwatch(handle): stop and free a watcher (once). */
static napi_value n_unwatch(napi_env env, napi_callback_info info) {
  ARGS(1);
  fd_watch *w;
  if (napi_get_value_external(env, argv[0], (void **)&w) != napi_ok || !w || w->closing) return NULL;
  w->closing = 1;
  uv_poll_stop(&w->poll);
  napi_delete_reference(env, w->cb);
  napi_async_destroy(env, w->ctx);
  uv_close((uv_handle_t *)&w->poll, watch_closed);
  return NULL;
}

/* readNonblock(fd, buf) -> bytes read, or -errno (EAGAIN: nothing to read now). Never throws on I/O errors. */
static napi_value n_read_nonblock(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  void *data;
  size_t len;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (fd, buffer)");
    return NULL;
  }
  ssize_t n;
  do n = read(fd, data, len); while (n < 0 && errno == EINTR);
  napi_value out;
  napi_create_int64(env, n < 0 ? -errno : n, &out);
  return out;
}

/* fuseIo(devFd, req, reqLen, fd, out) -> bytes: a FUSE READ or WRITE request (req: the request as read from devFd,
   reqLen bytes) done on file fd and answered on devFd, in one call: pread into out (READ) or pwrite of the request's
   data (WRITE), then the reply. The caller picked fd (the overlay's backing file for the request's node or handle) and
   keeps it open meanwhile. -errno when the pread/pwrite failed: no reply was written (the caller answers the error).
   A reply the kernel refuses with ENOENT (request interrupted) or ENODEV (unmounted) is dropped; other reply errors
   throw. */
static napi_value n_fuse_io(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t dev, fd;
  int64_t req_len;
  void *req, *out = NULL;
  size_t req_cap, out_cap = 0;
  if (get_fd(env, argv[0], &dev) || get_fd(env, argv[3], &fd)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &req, &req_cap) != napi_ok || napi_get_value_int64(env, argv[2], &req_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (devFd, req, reqLen, fd, out)");
    return NULL;
  }
  const size_t IN = sizeof(struct fuse_in_header);
  if (req_len < 0 || (size_t)req_len > req_cap || (size_t)req_len < IN + sizeof(struct fuse_read_in)) {
    napi_throw_range_error(env, NULL, "fuseIo: short request");
    return NULL;
  }
  const struct fuse_in_header *ih = (const struct fuse_in_header *)req;
  struct fuse_out_header oh = {.error = 0, .unique = ih->unique};
  struct fuse_write_out wo = {0};
  struct iovec iov[2] = {{&oh, sizeof oh}, {NULL, 0}};
  ssize_t done = 0;
  if (ih->opcode == FUSE_READ) {
    const struct fuse_read_in *ri = (const struct fuse_read_in *)((const char *)req + IN);
    if (napi_get_buffer_info(env, argv[4], &out, &out_cap) != napi_ok || ri->size > out_cap) {
      napi_throw_range_error(env, NULL, "fuseIo: output buffer too small");
      return NULL;
    }
    while (done < (ssize_t)ri->size) {
      ssize_t n = pread(fd, (char *)out + done, ri->size - done, (off_t)(ri->offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) done = -errno;
      if (n <= 0) break;
      done += n;
    }
    iov[1].iov_base = out;
    iov[1].iov_len = done > 0 ? (size_t)done : 0;
  } else if (ih->opcode == FUSE_WRITE) {
    const struct fuse_write_in *wi = (const struct fuse_write_in *)((const char *)req + IN);
    size_t at = IN + sizeof(struct fuse_write_in);
    if ((size_t)req_len < at + wi->size) {
      napi_throw_range_error(env, NULL, "fuseIo: write data past the request");
      return NULL;
    }
    while (done < (ssize_t)wi->size) {
      ssize_t n = pwrite(fd, (const char *)req + at + done, wi->size - done, (off_t)(wi->offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        done = -errno;
        break;
      }
      done += n;
    }
    wo.size = done > 0 ? (uint32_t)done : 0;
    iov[1].iov_base = &wo;
    iov[1].iov_len = sizeof wo;
  } else {
    napi_throw_range_error(env, NULL, "fuseIo: not a READ or WRITE");
    return NULL;
  }
  if (done >= 0) {
    oh.len = (uint32_t)(sizeof oh + iov[1].iov_len);
    ssize_t w;
    do w = writev(dev, iov, iov[1].iov_len ? 2 : 1); while (w < 0 && errno == EINTR);
    if (w < 0 && errno != ENOENT && errno != ENODEV) return throw_errno(env, errno, "writev /dev/fuse", NULL);
  }
  napi_value res;
  napi_create_int64(env, done, &res);
  return res;
}

/* backingOpen(devFd, fd) -> backing id: FUSE_DEV_IOC_BACKING_OPEN of the open file fd on the /dev/fuse connection
   devFd. The kernel keeps its own reference of the file (fd may be closed after). Throws the errno (EPERM without
   CAP_SYS_ADMIN or when passthrough was not negotiated, ELOOP past max_stack_depth, ENOTTY on kernels without it). */
static napi_value n_backing_open(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t dev, fd;
  if (get_fd(env, argv[0], &dev) || get_fd(env, argv[1], &fd)) return NULL;
  struct fuse_backing_map map;
  memset(&map, 0, sizeof map);
  map.fd = fd;
  int id;
  do id = ioctl(dev, FUSE_DEV_IOC_BACKING_OPEN, &map); while (id < 0 && errno == EINTR);
  if (id < 0) return throw_errno(env, errno, "ioctl(FUSE_DEV_IOC_BACKING_OPEN)", NULL);
  napi_value out;
  napi_create_int32(env, id, &out);
  return out;
}

/* backingClose(devFd, id): FUSE_DEV_IOC_BACKING_CLOSE. Opens that use the backing file keep it (the kernel's own
   references); the id is gone for new OPEN replies. */
static napi_value n_backing_close(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t dev;
  uint32_t id;
  if (get_fd(env, argv[0], &dev)) return NULL;
  napi_get_value_uint32(env, argv[1], &id);
  int r;
  do r = ioctl(dev, FUSE_DEV_IOC_BACKING_CLOSE, &id); while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, errno, "ioctl(FUSE_DEV_IOC_BACKING_CLOSE)", NULL);
  return NULL;
}

/* The fields of a struct stat into out (a Float64Array of STAT_FIELDS): dev, ino, mode, nlink, uid, gid, rdev,
   size, blksize, blocks, then atime, mtime, ctime as seconds and nanoseconds apart (Node's fs.Stats carries times as
   double milliseconds: ~240 ns steps today, so nanoseconds cannot be got back from it). */
#define STAT_FIELDS 16
static int stat_out(napi_env env, napi_value v, double **out) {
  napi_typedarray_type t;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok || t != napi_float64_array || len < STAT_FIELDS) {
    napi_throw_type_error(env, NULL, "expected a Float64Array of 16");
    return -1;
  }
  *out = data;
  return 0;
}

static void fill_stat(double *o, const struct stat *st) {
  o[0] = (double)st->st_dev;
  o[1] = (double)st->st_ino;
  o[2] = st->st_mode;
  o[3] = (double)st->st_nlink;
  o[4] = st->st_uid;
  o[5] = st->st_gid;
  o[6] = (double)st->st_rdev;
  o[7] = (double)st->st_size;
  o[8] = (double)st->st_blksize;
  o[9] = (double)st->st_blocks;
  o[10] = (double)st->st_atim.tv_sec;
  o[11] = (double)st->st_atim.tv_nsec;
  o[12] = (double)st->st_mtim.tv_sec;
  o[13] = (double)st->st_mtim.tv_nsec;
  o[14] = (double)st->st_ctim.tv_sec;
  o[15] = (double)st->st_ctim.tv_nsec;
}

/* lstatInto(path, out) -> true, or false when there is no such entry (ENOENT, ENOTDIR); other errors throw. */
static napi_value n_lstat_into(napi_env env, napi_callback_info info) {
  ARGS(2);
  char path[PATH_BUF];
  STR(0, path);
  double *o;
  if (stat_out(env, argv[1], &o)) return NULL;
  struct stat st;
  napi_value r;
  if (lstat(path, &st) != 0) {
    if (errno != ENOENT && errno != ENOTDIR) return throw_errno(env, errno, "lstat", path);
    napi_get_boolean(env, false, &r);
    return r;
  }
  fill_stat(o, &st);
  napi_get_boolean(env, true, &r);
  return r;
}

/* fstatInto(fd, out) */
static napi_value n_fstat_into(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  if (get_fd(env, argv[0], &fd)) return NULL;
  double *o;
  if (stat_out(env, argv[1], &o)) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0) return throw_errno(env, errno, "fstat", NULL);
  fill_stat(o, &st);
  return NULL;
}

/* lutimens(path, asec, ansec, msec, mnsec): utimensat(AT_FDCWD, path, .., AT_SYMLINK_NOFOLLOW) with exact times;
   a nanosecond field may be UTIME_NOW or UTIME_OMIT. */
static napi_value n_lutimens(napi_env env, napi_callback_info info) {
  ARGS(5);
  char path[PATH_BUF];
  STR(0, path);
  int64_t v[4];
  for (int i = 0; i < 4; i++) napi_get_value_int64(env, argv[i + 1], &v[i]);
  struct timespec ts[2] = {{(time_t)v[0], (long)v[1]}, {(time_t)v[2], (long)v[3]}};
  if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) != 0) return throw_errno(env, errno, "utimensat", path);
  return NULL;
}

/* Inherited files of a child process. Node marks its own fds close-on-exec; files opened by other libraries
   (LevelDB's LOCK, LOG, MANIFEST and log files) may not be, and a detached child (a FUSE server) would hold them
   for its whole life. cloexecFrom(lo): set FD_CLOEXEC on every fd >= lo (close_range(2), Linux 5.11+, else a walk
   of /proc/self/fd); returns how many fds it looked at (-1: all, by close_range). closeInherited(lo, keep): in a
   freshly started process, close every fd >= lo but `keep` that is not close-on-exec (what it inherited by
   accident); returns how many it closed. */
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#include <dirent.h>

static int list_fds(int lo, int *out, int max) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int dfd = dirfd(d), n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && n < max) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    int fd = atoi(e->d_name);
    if (fd >= lo && fd != dfd) out[n++] = fd;
  }
  closedir(d);
  return n;
}

static napi_value n_cloexec_from(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t lo;
  if (get_fd(env, argv[0], &lo)) return NULL;
  napi_value ret;
#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned)lo, ~0U, CLOSE_RANGE_CLOEXEC) == 0) {
    napi_create_int32(env, -1, &ret);
    return ret;
  }
#endif
  static int fds[65536];
  int n = list_fds(lo, fds, 65536);
  if (n < 0) return throw_errno(env, errno, "opendir", "/proc/self/fd");
  for (int i = 0; i < n; i++) {
    int fl = fcntl(fds[i], F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC)) fcntl(fds[i], F_SETFD, fl | FD_CLOEXEC);
  }
  napi_create_int32(env, n, &ret);
  return ret;
}

static napi_value n_close_inherited(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t lo, keep;
  if (get_fd(env, argv[0], &lo)) return NULL;
  if (napi_get_value_int32(env, argv[1], &keep) != napi_ok) keep = -1;
  static int fds[65536];
  int n = list_fds(lo, fds, 65536), closed = 0;
  if (n < 0) return throw_errno(env, errno, "opendir", "/proc/self/fd");
  for (int i = 0; i < n; i++) {
    if (fds[i] == keep) continue;
    int fl = fcntl(fds[i], F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC) && close(fds[i]) == 0) closed++;
  }
  napi_value ret;
  napi_create_int32(env, closed, &ret);
  return ret;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"mknod", NULL, n_mknod, NULL, NULL, NULL, napi_default, NULL},
    {"lsetxattr", NULL, n_lsetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"lgetxattr", NULL, n_lgetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"llistxattr", NULL, n_llistxattr, NULL, NULL, NULL, napi_default, NULL},
    {"lremovexattr", NULL, n_lremovexattr, NULL, NULL, NULL, napi_default, NULL},
    {"renameat2", NULL, n_renameat2, NULL, NULL, NULL, napi_default, NULL},
    {"fallocate", NULL, n_fallocate, NULL, NULL, NULL, napi_default, NULL},
    {"lseek", NULL, n_lseek, NULL, NULL, NULL, napi_default, NULL},
    {"copyFileRange", NULL, n_copy_file_range, NULL, NULL, NULL, napi_default, NULL},
    {"willNeed", NULL, n_will_need, NULL, NULL, NULL, napi_default, NULL},
    {"dtypeSupported", NULL, n_dtype_supported, NULL, NULL, NULL, napi_default, NULL},
    {"watchReadable", NULL, n_watch_readable, NULL, NULL, NULL, napi_default, NULL},
    {"unwatch", NULL, n_unwatch, NULL, NULL, NULL, napi_default, NULL},
    {"spinUs", NULL, n_spin_us, NULL, NULL, NULL, napi_default, NULL},
    {"readNonblock", NULL, n_read_nonblock, NULL, NULL, NULL, napi_default, NULL},
    {"fuseIo", NULL, n_fuse_io, NULL, NULL, NULL, napi_default, NULL},
    {"backingOpen", NULL, n_backing_open, NULL, NULL, NULL, napi_default, NULL},
    {"backingClose", NULL, n_backing_close, NULL, NULL, NULL, napi_default, NULL},
    {"lstatInto", NULL, n_lstat_into, NULL, NULL, NULL, napi_default, NULL},
    {"fstatInto", NULL, n_fstat_into, NULL, NULL, NULL, napi_default, NULL},
    {"lutimens", NULL, n_lutimens, NULL, NULL, NULL, napi_default, NULL},
    {"cloexecFrom", NULL, n_cloexec_from, NULL, NULL, NULL, napi_default, NULL},
    {"closeInherited", NULL, n_close_inherited, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
