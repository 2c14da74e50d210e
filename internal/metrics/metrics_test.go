package metrics

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"binance-symbol-tick-store/internal/backfill"
	"binance-symbol-tick-store/internal/websocket"
)

// scrape fetches and parses the metrics page with Prometheus's own parser.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("metrics page does not parse: %v", err)
	}
	return fams
}

// value returns the value of name's series whose symbol label is sym ("" for
// a series without labels).
func value(t *testing.T, fams map[string]*dto.MetricFamily, name, sym string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range f.Metric {
		got := ""
		for _, l := range m.Label {
			if l.GetName() == "symbol" {
				got = l.GetValue()
			}
		}
		if got != sym {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no series %s{symbol=%q}", name, sym)
	return 0
}

func TestMetrics(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "ticks.db")
	os.WriteFile(db, make([]byte, 4096), 0o644)
	os.WriteFile(db+"-wal", make([]byte, 1000), 0o644)
	// A symbol the store would refuse, to show that label values are escaped.
	forged := "X\"} 1\nfake_series{a=\"b"
	m := New(Sources{
		Streams: func() map[string]websocket.Stats {
			return map[string]websocket.Stats{
				"BTCUSDT": {Connected: true, TicksStored: 120, WriteErrors: 2, Reconnects: 3, LastTradeMillis: 1791382992338,
					PendingIDs: 7, Stats: backfill.Stats{GapsFound: 4, GapsFilled: 3, GapsUnfillable: 1, TicksBackfilled: 900, TicksUnfillable: 50}},
				forged: {},
			}
		},
		RESTWeight: func() int { return 140 },
		DBPath:     db,
	})
	m.Attempts.Add(5)
	m.WriteLatency.Observe(0.0003)
	fams := scrape(t, m)
	for name, want := range map[string]float64{
		"tickstore_ticks_stored_total":          120,
		"tickstore_write_errors_total":          2,
		"tickstore_reconnects_total":            3,
		"tickstore_connected":                   1,
		"tickstore_last_tick_timestamp_seconds": 1791382992.338,
		"tickstore_gap_ids_pending":             7,
		"tickstore_gaps_found_total":            4,
		"tickstore_gaps_filled_total":           3,
		"tickstore_gaps_unfillable_total":       1,
		"tickstore_ticks_backfilled_total":      900,
		"tickstore_ticks_unfillable_total":      50,
	} {
		if got := value(t, fams, name, "BTCUSDT"); got != want {
			t.Errorf("%s{symbol=BTCUSDT} = %v, want %v", name, got, want)
		}
	}
	for name, want := range map[string]float64{
		"tickstore_rest_weight_used":             140,
		"tickstore_ws_connection_attempts_total": 5,
		"tickstore_db_size_bytes":                4096,
		"tickstore_wal_size_bytes":               1000,
	} {
		if got := value(t, fams, name, ""); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if value(t, fams, "tickstore_connected", forged) != 0 {
		t.Error("the hostile symbol's series has the wrong value")
	}
	if _, ok := fams["fake_series"]; ok {
		t.Error("a symbol forged a series")
	}
	if h := fams["tickstore_db_write_seconds"].Metric[0].Histogram; h.GetSampleCount() != 1 {
		t.Errorf("write latency histogram count = %d, want 1", h.GetSampleCount())
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s: runtime and process metrics missing", name)
		}
	}
}
