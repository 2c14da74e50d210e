package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestIngestSmoke runs the ingest measurement at a toy size: it builds the
// server, so it is skipped with -short. It checks that the command still
// works against the current server, not any figure.
func TestIngestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the server")
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"ingest", "-symbols", "3", "-duration", "1s", "-window", "50"}, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{"\ningest_rate ", "\ningest_missing_ids 0 ids\n", "\ningest_ratio_to_limit "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"nope"}, &out); err == nil {
		t.Error("run(nope) = nil, want an error")
	}
}
