package config

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		DBPath:       "./.data/ticks.db",
		HTTPPort:     8080,
		WSURL:        "wss://fstream.binance.com/market/ws",
		RESTURL:      "https://fapi.binance.com",
		PollInterval: time.Minute,
		StaleTimeout: 5 * time.Minute,
		LogLevel:     slog.LevelInfo,

		MaxAge:         23*time.Hour + 50*time.Minute,
		SilenceTimeout: 5 * time.Minute,
		RESTWeight:     1200,
	}
	if c != want {
		t.Errorf("Load(empty) = %+v\nwant %+v", c, want)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{
		"DB_PATH":                "/app/.data/x.db",
		"HTTP_PORT":              " 0 ",
		"BINANCE_WS_URL":         "ws://127.0.0.1:9443/market/ws/",
		"BINANCE_REST_URL":       "http://127.0.0.1:9443",
		"SETTINGS_POLL_INTERVAL": "2s",
		"STREAM_STALE_TIMEOUT":   "1m30s",
		"LOG_LEVEL":              "DEBUG",
		"STREAM_MAX_AGE":         "10s",
		"STREAM_SILENCE_TIMEOUT": "2s",
		"REST_WEIGHT_PER_MINUTE": "600",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DBPath != "/app/.data/x.db" || c.HTTPPort != 0 || c.WSURL != "ws://127.0.0.1:9443/market/ws" ||
		c.RESTURL != "http://127.0.0.1:9443" || c.PollInterval != 2*time.Second ||
		c.StaleTimeout != 90*time.Second || c.LogLevel != slog.LevelDebug ||
		c.MaxAge != 10*time.Second || c.SilenceTimeout != 2*time.Second || c.RESTWeight != 600 {
		t.Errorf("Load = %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct{ name, value string }{
		{"HTTP_PORT", "abc"},
		{"HTTP_PORT", "65536"},
		{"HTTP_PORT", "-1"},
		{"DB_PATH", "ticks.db?mode=ro"},
		{"DB_PATH", "file:ticks.db"},
		{"BINANCE_WS_URL", "fstream.binance.com/market/ws"},
		{"BINANCE_WS_URL", "https://fstream.binance.com/market/ws"},
		{"BINANCE_WS_URL", "wss://fstream.binance.com/market/ws?x=1"},
		{"BINANCE_REST_URL", "ftp://fapi.binance.com"},
		{"SETTINGS_POLL_INTERVAL", "60"},
		{"SETTINGS_POLL_INTERVAL", "10ms"},
		{"STREAM_STALE_TIMEOUT", "0s"},
		{"STREAM_STALE_TIMEOUT", "-5m"},
		{"LOG_LEVEL", "verbose"},
		{"STREAM_MAX_AGE", "24"},
		{"STREAM_SILENCE_TIMEOUT", "1ms"},
		{"REST_WEIGHT_PER_MINUTE", "10"},
		{"REST_WEIGHT_PER_MINUTE", "2401"},
		{"REST_WEIGHT_PER_MINUTE", "1e3"},
	}
	for _, tt := range tests {
		_, err := Load(env(map[string]string{tt.name: tt.value}))
		if err == nil {
			t.Errorf("Load(%s=%q) succeeded, want an error", tt.name, tt.value)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, tt.name) || !strings.Contains(msg, tt.value) || strings.Contains(msg, "\n") {
			t.Errorf("Load(%s=%q) error %q: want one line naming the variable and the value", tt.name, tt.value, msg)
		}
	}
}
