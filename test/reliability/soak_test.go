package reliability

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSoak runs 100 symbols at 2,000 ticks/s with random faults (drops,
// stalls, 1008 closes, REST 429 and a SIGKILL restart every few minutes) for
// RELIABILITY_SOAK (e.g. 30m; skipped when unset). It samples RSS, threads
// and descriptors every 30 s and expects 100 % completeness at the end.
// RELIABILITY_SOAK_KILL_EVERY sets the restart period (default 5m).
func TestSoak(t *testing.T) {
	v := os.Getenv("RELIABILITY_SOAK")
	if v == "" {
		t.Skip("set RELIABILITY_SOAK=30m (make soak) to run the soak")
	}
	dur, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("RELIABILITY_SOAK=%q: %v", v, err)
	}
	killEvery := 5 * time.Minute
	if v := os.Getenv("RELIABILITY_SOAK_KILL_EVERY"); v != "" {
		if killEvery, err = time.ParseDuration(v); err != nil {
			t.Fatalf("RELIABILITY_SOAK_KILL_EVERY=%q: %v", v, err)
		}
	}
	sample := min(30*time.Second, dur/10)
	rng := rand.New(rand.NewPCG(seed(t), 3))
	syms := symbols("S", 100)
	f := newFixture(t, "", syms...)
	f.env["STREAM_STALE_TIMEOUT"] = "10s"   // stalled streams are found in seconds, not minutes
	f.env["STREAM_SILENCE_TIMEOUT"] = "20s" // and quiet ones checked against REST
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, 20, syms)

	faults := map[string]int{}
	var samples []string
	segStart := readProc(t, s.pid())
	var segments []string
	start := time.Now()
	nextKill := start.Add(killEvery)
	nextSample := start.Add(sample)
	nextFault := start.Add(randomDuration(rng, 2*time.Second, 8*time.Second))
	for time.Since(start) < dur {
		now := time.Now()
		switch {
		case now.After(nextKill):
			last := readProc(t, s.pid())
			segments = append(segments, fmt.Sprintf("[%v -> %v]", segStart, last))
			s.kill()
			checkFile(t, f.dbPath)
			faults["sigkill"]++
			s = f.start(t)
			segStart = readProc(t, s.pid())
			nextKill = now.Add(killEvery)
		case now.After(nextSample):
			p := readProc(t, s.pid())
			code, _, err := get(t, s.url("/healthz"), 10*time.Second)
			samples = append(samples, fmt.Sprintf("%4.0fs %v healthz=%d", time.Since(start).Seconds(), p, code))
			t.Logf("sample %s (err %v)", samples[len(samples)-1], err)
			nextSample = now.Add(sample)
		case now.After(nextFault):
			sym := syms[rng.IntN(len(syms))]
			switch k := rng.IntN(4); k {
			case 0:
				f.x.Drop(sym)
				faults["drop"]++
			case 1:
				f.x.Stall(sym)
				faults["stall"]++
			case 2:
				f.x.CloseWith(sym, 1008, "policy violation")
				faults["close 1008"]++
			case 3:
				f.x.FailREST(http.StatusTooManyRequests, 2*time.Second, 3)
				faults["rest 429 x3"]++
			}
			nextFault = now.Add(randomDuration(rng, 2*time.Second, 8*time.Second))
		default:
			time.Sleep(100 * time.Millisecond) // scheduler tick, not synchronisation
		}
	}
	segments = append(segments, fmt.Sprintf("[%v -> %v]", segStart, readProc(t, s.pid())))
	waitFor(t, "every symbol subscribed", subscribeWait(len(syms))+time.Minute, func() bool { return allSubscribed(f.x, syms) })
	streamed(t, db, f.x, syms, 2*time.Minute)
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 5*time.Minute)
	checkFile(t, f.dbPath)
	checkLogLines(t, s.stdout.String())
	var fl []string
	for k, n := range faults {
		fl = append(fl, fmt.Sprintf("%s=%d", k, n))
	}
	figure(t, "soak %v, 100 symbols, 2000 ticks/s, faults {%s}; %v complete %v after the load stopped; per-process first->last samples %s\nsamples:\n%s",
		dur, strings.Join(fl, " "), sum, took.Round(time.Millisecond), strings.Join(segments, " "), strings.Join(samples, "\n"))
}
