package reliability

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDiskFull puts the database on a 32 MiB tmpfs and fills it while ticks
// flow: writes fail with SQLITE_FULL, the store logs, keeps running and
// serving; once the filler is removed it stores again and backfills what it
// skipped.
func TestDiskFull(t *testing.T) {
	skipShort(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a size-limited tmpfs")
	}
	mnt := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() }) // after the server's cleanup: LIFO

	syms := symbols("D", 5)
	f := newFixture(t, filepath.Join(mnt, "ticks.db"), syms...)
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, 50, syms)
	streamed(t, db, f.x, syms, 30*time.Second)

	filler := filepath.Join(mnt, "filler")
	fill(t, filler)
	fullAt := time.Now()
	waitFor(t, "a write failing with SQLITE_FULL", 30*time.Second, func() bool {
		return strings.Contains(s.stdout.String(), "database or disk is full")
	})
	failedAfter := time.Since(fullAt)

	// While full: still running, status and health answer.
	hold := pick(3*time.Second, 30*time.Second)
	healthCode, _, herr := get(t, s.url("/healthz"), 10*time.Second)
	statusCode, page, serr := get(t, s.url("/status"), 10*time.Second)
	if herr != nil || serr != nil || statusCode != 200 || !strings.Contains(page, "Status:     running") {
		t.Errorf("while the disk is full: /healthz %d %v, /status %d %v\n%s", healthCode, herr, statusCode, serr, page)
	}
	time.Sleep(hold) // the fault's duration, not synchronisation
	if s.exited() {
		t.Fatalf("server exited while the disk was full: %v\n%s", s.err, s.stdout)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	streamed(t, db, f.x, syms, 60*time.Second)
	storingAgain := time.Since(freed)
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 90*time.Second)
	checkFile(t, f.dbPath)
	checkLogLines(t, s.stdout.String())
	figure(t, "tmpfs 32 MiB filled for %v under 250 ticks/s; first SQLITE_FULL logged %v after the fill; while full /healthz=%d /status=%d; storing again %v after space returned; %v complete %v after the load stopped (%v after space returned); failed-write log lines=%d",
		hold,
		failedAfter.Round(time.Millisecond), healthCode, statusCode, storingAgain.Round(time.Millisecond), sum,
		took.Round(time.Millisecond), time.Since(freed).Round(time.Millisecond), strings.Count(s.stdout.String(), "tick not stored"))
}

// fill writes path until the filesystem has no space left.
func fill(t *testing.T, path string) {
	t.Helper()
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	for _, size := range []int{1 << 20, 4096, 1} {
		buf := make([]byte, size)
		for {
			if _, err := fh.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
}
