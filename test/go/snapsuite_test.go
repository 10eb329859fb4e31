// containerd's snapshotter conformance suite (snapshots/testsuite, from Debian's packaged
// containerd sources) against `layerfs snapshotter`, reached through containerd's own proxy
// client (snapshots/proxy), or against containerd's overlayfs snapshotter as the control.
// Built and run by test/containerd-suite.test.ts (GOPATH mode, offline):
//
//	SNAPSUITE_TARGET=layerfs|overlayfs  which snapshotter
//	SNAPSUITE_CLI=.../dist/src/cli/main.js  layerfs's CLI (layerfs only)
//	SNAPSUITE_DRIVER=overlay|fuse            its driver (layerfs only)
//
// Each case gets a fresh `layerfs snapshotter` with its own root and shared store under the
// case's temp dir; the cleanup stops it and unmounts what is left under that dir.
package snapsuite

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

func layerfsSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	cli := os.Getenv("SNAPSUITE_CLI")
	driver := os.Getenv("SNAPSUITE_DRIVER")
	// a unix socket path holds 108 bytes at most: the case's temp dir can be longer
	sockDir, err := os.MkdirTemp("/tmp", "lfs-snapsuite-")
	if err != nil {
		return nil, nil, err
	}
	sock := filepath.Join(sockDir, "s.sock")
	logPath := filepath.Join(filepath.Dir(root), "snapshotter.log")
	if p := os.Getenv("SNAPSUITE_LOG"); p != "" {
		logPath = p // kept (benchmarks: with LAYERFS_LOG_LEVEL=debug, each request's time)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, nil, err
	}
	cmd := exec.Command("node", cli, "--root", filepath.Join(root, "lfs"), "--shared", filepath.Join(root, "shared"), "--role", "writer", "snapshotter", "--address", sock, "--driver", driver)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(sockDir)
		return nil, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		defer logf.Close()
		defer os.RemoveAll(sockDir)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		// the FUSE servers outlive the snapshotter: unmount what the case left (they exit then)
		for _, m := range mountsUnder(filepath.Dir(root)) {
			if err := syscall.Unmount(m, 0); err != nil {
				_ = syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
		return nil
	}
	// wait (generously: the machine is shared) for the socket to answer
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err
			stop()
			return nil, nil, fmt.Errorf("layerfs snapshotter exited before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("layerfs snapshotter did not serve %s in time", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.Dial("unix://"+sock, grpc.WithInsecure()) //nolint:staticcheck // the packaged grpc has no credentials/insecure
	if err != nil {
		stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "layerfs")
	return sn, func() error {
		err := sn.Close()
		conn.Close()
		stop()
		return err
	}, nil
}

func overlaySnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	sn, err := overlay.NewSnapshotter(root)
	if err != nil {
		return nil, nil, err
	}
	return sn, sn.Close, nil
}

func TestSnapshotterSuite(t *testing.T) {
	switch target := os.Getenv("SNAPSUITE_TARGET"); target {
	case "overlayfs":
		testsuite.SnapshotterSuite(t, "Overlay", overlaySnapshotter)
	case "layerfs":
		testsuite.SnapshotterSuite(t, "Layerfs-"+os.Getenv("SNAPSUITE_DRIVER"), layerfsSnapshotter)
	default:
		t.Skipf("SNAPSUITE_TARGET=%q: want layerfs or overlayfs", target)
	}
}

// newCase makes a temp dir with root/ and work/ as the suite does, and a snapshotter on root/.
func newCase(t *testing.T) (context.Context, snapshots.Snapshotter, string) {
	if os.Getenv("SNAPSUITE_TARGET") != "layerfs" {
		t.Skip("layerfs only")
	}
	ctx := namespaces.WithNamespace(context.Background(), "snapsuite")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	work := filepath.Join(dir, "work")
	for _, d := range []string{root, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sn, cleanup, err := layerfsSnapshotter(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup() })
	return ctx, sn, work
}

// Issue #16 item 7: Commit of an Active snapshot that is still mounted succeeds, the mount keeps
// working (reads and writes), the committed layer holds what was written before the commit, and
// the RW layer goes once it is unmounted.
func TestCommitWhileMounted(t *testing.T) {
	ctx, sn, work := newCase(t)
	// a parent, so the Active snapshot is an overlay (or a FUSE merge) and not a plain bind
	base := filepath.Join(work, "base")
	os.MkdirAll(base, 0o755)
	ms, err := sn.Prepare(ctx, "base-a", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All(ms, base); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(base, "lower"), []byte("lower\n"), 0o644)
	if err := mount.UnmountAll(base, 0); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-a"); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(work, "active")
	os.MkdirAll(mnt, 0o755)
	ms, err = sn.Prepare(ctx, "active", "base")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All(ms, mnt); err != nil {
		t.Fatal(err)
	}
	mounted := true
	defer func() {
		if mounted {
			mount.UnmountAll(mnt, 0)
		}
	}()
	if err := os.WriteFile(filepath.Join(mnt, "before"), []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "committed", "active"); err != nil {
		t.Fatalf("commit while mounted: %v", err)
	}
	// the mount still works
	if err := os.WriteFile(filepath.Join(mnt, "after"), []byte("after\n"), 0o644); err != nil {
		t.Fatalf("write after commit: %v", err)
	}
	for _, f := range []string{"lower", "before", "after"} {
		if b, err := os.ReadFile(filepath.Join(mnt, f)); err != nil || string(b) != f+"\n" {
			t.Fatalf("read %s after commit: %q, %v", f, b, err)
		}
	}
	if err := mount.UnmountAll(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	// the committed snapshot: what was there at commit time
	view := filepath.Join(work, "view")
	os.MkdirAll(view, 0o755)
	ms, err = sn.View(ctx, "view", "committed")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All(ms, view); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(view, 0)
	for _, f := range []string{"lower", "before"} {
		if b, err := os.ReadFile(filepath.Join(view, f)); err != nil || string(b) != f+"\n" {
			t.Errorf("committed snapshot: %s = %q, %v", f, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(view, "after")); !os.IsNotExist(err) {
		t.Errorf("committed snapshot has a file written after the commit: %v", err)
	}
	// the RW layer of the committed snapshot is gone once unmounted (Cleanup at the latest)
	if c, ok := sn.(snapshots.Cleaner); ok {
		if err := c.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := rwLayers(t, filepath.Join(filepath.Dir(work), "root", "lfs")); n != 0 {
		t.Errorf("%d RW layers left after the mounted snapshot's commit and unmount (want 0)", n)
	}
}

// rwLayers counts the RW layer dirs in a layerfs root (RO layers are links into the shared store).
func rwLayers(t *testing.T, root string) int {
	ents, err := os.ReadDir(filepath.Join(root, "overlay"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && len(e.Name()) == 64 {
			n++
		}
	}
	return n
}

// Issue #16 item 9: Created and Updated have nanosecond precision and are never before the
// request began nor after its answer came (with milliseconds, most fall before the request).
func TestTimesWithinRequest(t *testing.T) {
	ctx, sn, _ := newCase(t)
	subMs := 0
	check := func(what string, got, t1, t2 time.Time) {
		if got.Before(t1) || got.After(t2) {
			t.Errorf("%s: %s not within the request [%s, %s]", what, got.Format(time.RFC3339Nano), t1.Format(time.RFC3339Nano), t2.Format(time.RFC3339Nano))
		}
		if got.Nanosecond()%1_000_000 != 0 {
			subMs++
		}
	}
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("k%d", i)
		t1 := time.Now()
		if _, err := sn.Prepare(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		st, err := sn.Stat(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		check("created of "+key, st.Created, t1, t2)
		t1 = time.Now()
		st, err = sn.Update(ctx, snapshots.Info{Name: key, Labels: map[string]string{"x": "y"}}, "labels.x")
		t2 = time.Now()
		if err != nil {
			t.Fatal(err)
		}
		check("updated of "+key, st.Updated, t1, t2)
	}
	if subMs == 0 {
		t.Errorf("no time had a sub-millisecond part: milliseconds only")
	}
}

// TestLayerCycle is a benchmark, not a check (scripts/bench-snapshotter-layers.sh runs it; skipped unless
// SNAPSUITE_LAYER_CYCLE=N): N stacked layers made as containerd unpacks an image, prepare on the last commit,
// mount (containerd's mount code), write a file, unmount, commit; prints the total and per-step medians.
func TestLayerCycle(t *testing.T) {
	n := 0
	fmt.Sscan(os.Getenv("SNAPSUITE_LAYER_CYCLE"), &n)
	if n <= 0 {
		t.Skip("SNAPSUITE_LAYER_CYCLE=N runs it")
	}
	ctx := namespaces.WithNamespace(context.Background(), "snapsuite")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(root, 0o755)
	var sn snapshots.Snapshotter
	var cleanup func() error
	var err error
	if os.Getenv("SNAPSUITE_TARGET") == "overlayfs" {
		sn, cleanup, err = overlaySnapshotter(ctx, root)
	} else {
		sn, cleanup, err = layerfsSnapshotter(ctx, root)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	steps := map[string][]time.Duration{}
	timed := func(step string, fn func() error) {
		t0 := time.Now()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		steps[step] = append(steps[step], time.Since(t0))
	}
	start := time.Now()
	parent := ""
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("prepare-%d", i)
		var ms []mount.Mount
		timed("prepare", func() (err error) { ms, err = sn.Prepare(ctx, key, parent); return })
		timed("mount", func() error { return mount.All(ms, mnt) })
		timed("write", func() error { return os.WriteFile(filepath.Join(mnt, fmt.Sprintf("file-%d", i)), []byte("x"), 0o644) })
		timed("unmount", func() error { return mount.UnmountAll(mnt, 0) })
		name := fmt.Sprintf("layer-%d", i)
		timed("commit", func() error { return sn.Commit(ctx, name, key) })
		parent = name
	}
	total := time.Since(start)
	med := func(xs []time.Duration) time.Duration {
		s := append([]time.Duration(nil), xs...)
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		return s[len(s)/2]
	}
	fmt.Printf("layer-cycle %s %s: %d layers in %.1f s; medians: prepare %.1f ms, mount %.1f ms, write %.1f ms, unmount %.1f ms, commit %.1f ms\n",
		os.Getenv("SNAPSUITE_TARGET"), os.Getenv("SNAPSUITE_DRIVER"), n, total.Seconds(),
		float64(med(steps["prepare"]))/1e6, float64(med(steps["mount"]))/1e6, float64(med(steps["write"]))/1e6, float64(med(steps["unmount"]))/1e6, float64(med(steps["commit"]))/1e6)
}
