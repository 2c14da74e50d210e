// Package reliability holds the fault, load and hostile-input tests of issue 4.
// They build the real server binary, run it against the in-process fake
// exchange and read the SQLite file it writes with a separate connection, as a
// user would. The package has no code of its own outside its tests.
//
// go test ./test/reliability runs the short versions (about 100 s on 2 cores); -short
// skips them. Environment:
//
//	RELIABILITY_FULL=1            full versions (50 kills, 10 minutes of churn, ...)
//	RELIABILITY_SOAK=30m          run the soak for that long (skipped when unset)
//	RELIABILITY_SOAK_KILL_EVERY   SIGKILL period during the soak (default 5m)
//	RELIABILITY_SEED=n            repeat a random schedule; each test logs its seed
//	RELIABILITY_KILLS=n           number of kills in TestCrashSafety
//	RELIABILITY_RACE=1            build the server with -race
//	RELIABILITY_DEBUG_LOG=path    TestCrashSafety writes the last server log there
//
// Figures for docs/RELIABILITY.md: go test -v ./test/reliability | grep FIGURE.
package reliability
