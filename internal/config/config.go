// Package config turns the process environment into an immutable Config,
// refusing bad values at start-up with an error that names the variable.
package config

import (
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is the whole configuration of the store. The zero value is not
// useful; build one with Load.
type Config struct {
	DBPath       string        // DB_PATH: SQLite file; its directory is created if missing
	HTTPPort     int           // HTTP_PORT: status server port; 0 picks a free one (tests)
	WSURL        string        // BINANCE_WS_URL: base of the raw stream route, without trailing slash
	RESTURL      string        // BINANCE_REST_URL: base of the REST API, without trailing slash
	PollInterval time.Duration // SETTINGS_POLL_INTERVAL: how often symbol_settings is read
	StaleTimeout time.Duration // STREAM_STALE_TIMEOUT: silence (pings included) after which a socket is dead
	LogLevel     slog.Level    // LOG_LEVEL: debug, info, warn or error

	MaxAge         time.Duration // STREAM_MAX_AGE: a connection is replaced, overlap first, at this age
	SilenceTimeout time.Duration // STREAM_SILENCE_TIMEOUT: no trade for this long: ask REST if the market is quiet
	RESTWeight     int           // REST_WEIGHT_PER_MINUTE: this process's share of Binance's 2400 per IP
}

// Load reads the configuration through getenv (os.Getenv in production, a map
// in tests). Unset or empty variables take their defaults.
func Load(getenv func(string) string) (Config, error) {
	c := Config{
		DBPath:       "./.data/ticks.db",
		HTTPPort:     8080,
		WSURL:        "wss://fstream.binance.com/market/ws",
		RESTURL:      "https://fapi.binance.com",
		PollInterval: 60 * time.Second,
		StaleTimeout: 5 * time.Minute,
		LogLevel:     slog.LevelInfo,

		MaxAge:         23*time.Hour + 50*time.Minute,
		SilenceTimeout: 5 * time.Minute,
		RESTWeight:     1200,
	}
	p := parser{getenv: getenv}
	p.str("DB_PATH", &c.DBPath, checkDBPath)
	p.integer("HTTP_PORT", &c.HTTPPort, 0, 65535)
	p.str("BINANCE_WS_URL", &c.WSURL, checkURL("ws", "wss"))
	p.str("BINANCE_REST_URL", &c.RESTURL, checkURL("http", "https"))
	p.duration("SETTINGS_POLL_INTERVAL", &c.PollInterval, 100*time.Millisecond)
	p.duration("STREAM_STALE_TIMEOUT", &c.StaleTimeout, 100*time.Millisecond)
	p.level("LOG_LEVEL", &c.LogLevel)
	p.duration("STREAM_MAX_AGE", &c.MaxAge, time.Second)
	p.duration("STREAM_SILENCE_TIMEOUT", &c.SilenceTimeout, 100*time.Millisecond)
	p.integer("REST_WEIGHT_PER_MINUTE", &c.RESTWeight, 20, 2400)
	c.WSURL = strings.TrimRight(c.WSURL, "/")
	c.RESTURL = strings.TrimRight(c.RESTURL, "/")
	return c, p.err
}

// parser collects the first error; later calls are no-ops once one occurred.
type parser struct {
	getenv func(string) string
	err    error
}

func (p *parser) value(name string) (string, bool) {
	if p.err != nil {
		return "", false
	}
	v := strings.TrimSpace(p.getenv(name))
	return v, v != ""
}

func (p *parser) fail(name, v, why string) {
	p.err = fmt.Errorf("invalid %s=%q: %s", name, v, why)
}

func (p *parser) str(name string, dst *string, check func(string) string) {
	v, ok := p.value(name)
	if !ok {
		return
	}
	if why := check(v); why != "" {
		p.fail(name, v, why)
		return
	}
	*dst = v
}

func (p *parser) integer(name string, dst *int, lo, hi int) {
	v, ok := p.value(name)
	if !ok {
		return
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.fail(name, v, fmt.Sprintf("want a whole number from %d to %d", lo, hi))
		return
	}
	*dst = n
}

func (p *parser) duration(name string, dst *time.Duration, min time.Duration) {
	v, ok := p.value(name)
	if !ok {
		return
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < min {
		p.fail(name, v, fmt.Sprintf("want a Go duration of at least %v, such as 60s or 5m", min))
		return
	}
	*dst = d
}

func (p *parser) level(name string, dst *slog.Level) {
	v, ok := p.value(name)
	if !ok {
		return
	}
	if err := dst.UnmarshalText([]byte(v)); err != nil {
		p.fail(name, v, "want debug, info, warn or error")
	}
}

func checkDBPath(v string) string {
	if strings.ContainsAny(v, "?#") || strings.HasPrefix(v, "file:") {
		return "want a plain file path (no '?', '#' or file: URI)"
	}
	return ""
}

func checkURL(schemes ...string) func(string) string {
	return func(v string) string {
		u, err := url.Parse(v)
		if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return "want an absolute URL without query, such as " + schemes[len(schemes)-1] + "://host/path"
		}
		for _, s := range schemes {
			if u.Scheme == s {
				return ""
			}
		}
		return "want scheme " + strings.Join(schemes, " or ")
	}
}
