// Package metrics exposes the store's health in the Prometheus text format:
// per-symbol stream and repair totals read at scrape time, process-wide
// limits, database sizes, and Go runtime and process metrics.
package metrics

import (
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"binance-symbol-tick-store/internal/websocket"
)

// Sources are what the metrics are read from at each scrape. All must be
// safe for concurrent use.
type Sources struct {
	Streams    func() map[string]websocket.Stats // running streams by symbol
	RESTWeight func() int                        // REST weight used in the current minute
	DBPath     string                            // the database file; its -wal sits beside it
}

// Metrics owns the registry and the instruments the store updates directly.
type Metrics struct {
	reg *prometheus.Registry
	// WriteLatency observes every live tick write.
	WriteLatency prometheus.Histogram
	// Attempts counts WebSocket connection attempts, all symbols together.
	Attempts prometheus.Counter
}

// New registers every metric.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		WriteLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tickstore_db_write_seconds",
			Help:    "Time to store one live tick, lock wait included.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1, 5},
		}),
		Attempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstore_ws_connection_attempts_total",
			Help: "WebSocket connection attempts (dials), all symbols.",
		}),
	}
	m.reg.MustRegister(m.WriteLatency, m.Attempts, &collector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics page.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// collector reads the per-symbol totals and sizes at scrape time, so that a
// stopped symbol's series disappear with it and nothing is counted twice.
type collector struct{ src Sources }

var (
	perSymbol = []string{"symbol"}

	ticksStored    = desc("ticks_stored_total", "Live ticks written.", perSymbol)
	writeErrors    = desc("write_errors_total", "Live tick writes that failed (the ids are queued for repair).", perSymbol)
	lastTick       = desc("last_tick_timestamp_seconds", "Trade time of the last live tick stored.", perSymbol)
	connected      = desc("connected", "1 while the symbol's stream is connected.", perSymbol)
	reconnects     = desc("reconnects_total", "Connection attempts after the first.", perSymbol)
	gapsFound      = desc("gaps_found_total", "Ranges of missing ids found.", perSymbol)
	gapsFilled     = desc("gaps_filled_total", "Ranges of missing ids repaired from REST.", perSymbol)
	gapsUnfillable = desc("gaps_unfillable_total", "Ranges Binance no longer serves.", perSymbol)
	backfilled     = desc("ticks_backfilled_total", "Ticks stored by gap repair.", perSymbol)
	unfillable     = desc("ticks_unfillable_total", "Ticks lost for good: beyond Binance's REST window.", perSymbol)
	pending        = desc("gap_ids_pending", "Ids queued for repair.", perSymbol)
	restWeight     = desc("rest_weight_used", "REST weight used in the current UTC minute.", nil)
	dbSize         = desc("db_size_bytes", "Size of the database file.", nil)
	walSize        = desc("wal_size_bytes", "Size of the write-ahead log.", nil)
)

func desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc("tickstore_"+name, help, labels, nil)
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{ticksStored, writeErrors, lastTick, connected, reconnects,
		gapsFound, gapsFilled, gapsUnfillable, backfilled, unfillable, pending, restWeight, dbSize, walSize} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for sym, s := range c.src.Streams() {
		counter := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), sym)
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, sym)
		}
		counter(ticksStored, s.TicksStored)
		counter(writeErrors, s.WriteErrors)
		counter(reconnects, s.Reconnects)
		counter(gapsFound, s.GapsFound)
		counter(gapsFilled, s.GapsFilled)
		counter(gapsUnfillable, s.GapsUnfillable)
		counter(backfilled, s.TicksBackfilled)
		counter(unfillable, s.TicksUnfillable)
		gauge(pending, float64(s.PendingIDs))
		gauge(connected, boolFloat(s.Connected))
		if s.LastTradeMillis > 0 {
			gauge(lastTick, float64(s.LastTradeMillis)/1000)
		}
	}
	ch <- prometheus.MustNewConstMetric(restWeight, prometheus.GaugeValue, float64(c.src.RESTWeight()))
	for d, path := range map[*prometheus.Desc]string{dbSize: c.src.DBPath, walSize: c.src.DBPath + "-wal"} {
		var size int64
		if fi, err := os.Stat(path); err == nil {
			size = fi.Size()
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(size))
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
