/** A C program that walks a tree (lstat, llistxattr, lgetxattr, readdir) for some seconds while a timer signal
 *  interrupts it every 100 us (a handler without SA_RESTART, as Go's SIGURG preemption): it prints its counts as
 *  JSON and exits 1 if any call failed EINTR. */
export const SIGWALK_C = String.raw`
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long sigs;
static unsigned long eintr, calls;
static void on_alarm(int s) { (void)s; sigs++; }
static void note(int r, const char *what, const char *p) {
  calls++;
  if (r < 0 && errno == EINTR) { if (eintr++ < 5) fprintf(stderr, "EINTR %s %s\n", what, p); }
}
static void walk(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) { if (errno == EINTR) { eintr++; fprintf(stderr, "EINTR opendir %s\n", dir); } return; }
  struct dirent *e;
  char p[4096], buf[65536];
  for (;;) {
    errno = 0;
    e = readdir(d);
    if (!e) { note(errno ? -1 : 0, "readdir", dir); break; }
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    int r = lstat(p, &st);
    note(r, "lstat", p);
    note((int)llistxattr(p, buf, sizeof buf), "llistxattr", p);
    note((int)lgetxattr(p, "user.x", buf, sizeof buf), "lgetxattr", p);
    if (r == 0 && S_ISDIR(st.st_mode)) walk(p);
  }
  closedir(d);
}
int main(int argc, char **argv) {
  double secs = atof(argv[2]);
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART */
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = { { 0, 100 }, { 0, 100 } };
  setitimer(ITIMER_REAL, &it, NULL);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  unsigned long rounds = 0;
  do {
    walk(argv[1]);
    rounds++;
    clock_gettime(CLOCK_MONOTONIC, &t);
  } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < secs);
  printf("{\"rounds\":%lu,\"calls\":%lu,\"signals\":%lu,\"eintr\":%lu}\n", rounds, calls, sigs, eintr);
  return eintr ? 1 : 0;
}
`;
