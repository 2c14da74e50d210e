// Command bench measures the tick store against the targets of DESIGN
// section 7: it runs the real server binary as a child process against the
// in-process fake exchange over loopback, and prints each figure as a plain
// "name value unit" line. Comparisons (store vs bare loop, store vs a naive
// Python recorder) are measured in the same run, because the machine is
// shared and noisy.
//
//	go run ./cmd/bench [-server bin/server] <ingest|latency|load|idle|status|disk|backfill|all> [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench is one run of the command: where results go and the server binary.
type bench struct {
	out     io.Writer
	server  string // path of the server binary
	tmp     string // scratch directory, removed at the end
	python  string
	results []result
}

// result is one printed figure, kept for the summary.
type result struct {
	name, value, unit string
}

// report prints one figure as "name value unit" and keeps it for the summary.
func (b *bench) report(name string, value any, unit string) {
	var v string
	switch x := value.(type) {
	case float64:
		v = fmt.Sprintf("%.4g", x)
		if x >= 1e4 || x <= -1e4 {
			v = fmt.Sprintf("%.0f", x)
		}
	case time.Duration:
		v = fmt.Sprintf("%.3f", x.Seconds()*1000)
		if unit == "" {
			unit = "ms"
		}
	default:
		v = fmt.Sprint(x)
	}
	fmt.Fprintf(b.out, "%s %s %s\n", name, v, unit)
	b.results = append(b.results, result{name, v, unit})
}

// note prints a comment line (starting with #), not a figure.
func (b *bench) note(format string, args ...any) {
	fmt.Fprintf(b.out, "# "+format+"\n", args...)
}

var usage = `usage: bench [-server path] [-python path] <command> [flags]

commands:
  ingest    firehose from 100 symbols: stored ticks/s vs a bare one-row-per-commit loop
  latency   publish-to-visible latency at 2,000 ticks/s (p50, p99)
  load      100 symbols at 2,000 ticks/s: CPU and RSS, vs a naive Python recorder
  idle      1,000 enabled symbols with no trades: RSS, threads, goroutines per symbol
  status    /status latency at 20 M rows vs 20 k rows (100 symbols); bytes per tick
  disk      bytes per stored tick (table + index) on generated rows
  backfill  gap repair speed from the fake REST at the default weight budget
  all       ingest, latency, load, status, backfill (idle takes > 15 min: run it alone)

"bench <command> -h" lists the command's flags.
`

// run parses args, prints the machine and runs the command.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() { fmt.Fprint(stdout, usage) }
	server := fs.String("server", "", "server binary (default: go build ./cmd/server into a temp dir)")
	python := fs.String("python", "/usr/bin/python3", "python with the websockets package, for the load comparison")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	commands := map[string]func(context.Context, *bench, []string) error{
		"ingest": runIngest, "latency": runLatency, "load": runLoad, "idle": runIdle,
		"status": runStatus, "disk": runDisk, "backfill": runBackfill, "all": runAll,
	}
	f, ok := commands[cmd]
	if !ok {
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
	tmp, err := os.MkdirTemp("", "tickbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{out: stdout, server: *server, tmp: tmp, python: *python}
	b.machine(ctx)
	if b.server == "" {
		if b.server, err = buildServer(ctx, tmp); err != nil {
			return err
		}
	}
	if err := f(ctx, b, rest); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	fmt.Fprintln(stdout, "\n# summary")
	for _, r := range b.results {
		fmt.Fprintf(stdout, "%-34s %12s %s\n", r.name, r.value, r.unit)
	}
	return nil
}

func runAll(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("all", flag.ContinueOnError)
	fs.SetOutput(b.out)
	short := fs.Bool("short", false, "short runs (seconds, not minutes): a smoke test, not a measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sets := [][]string{{"-duration", "30s"}, {"-duration", "20s"}, {"-duration", "2m"}, nil, nil}
	if *short {
		sets = [][]string{{"-duration", "3s"}, {"-duration", "3s"}, {"-duration", "5s"},
			{"-big", "200000"}, {"-gap", "5000"}}
	}
	steps := []func(context.Context, *bench, []string) error{runIngest, runLatency, runLoad, runStatus, runBackfill}
	for i, f := range steps {
		if err := f(ctx, b, sets[i]); err != nil {
			return err
		}
	}
	return nil
}

// machine prints what the figures were measured on.
func (b *bench) machine(ctx context.Context) {
	model := "unknown"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	goVersion := runtime.Version()
	if out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	var memTotal string
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		memTotal, _, _ = strings.Cut(string(data), "\n")
		memTotal = strings.Join(strings.Fields(memTotal)[1:], " ")
	}
	b.note("date %s", time.Now().UTC().Format(time.RFC3339))
	b.note("machine nproc=%d cpu=%q mem=%s go=%s", runtime.NumCPU(), model, memTotal, goVersion)
	b.note("command %s", strings.Join(os.Args, " "))
}

// buildServer compiles ./cmd/server of the module the working directory is in.
func buildServer(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the module, or pass -server")
	}
	bin := filepath.Join(dir, "server")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/server")
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/server: %v\n%s", err, out)
	}
	return bin, nil
}
