package symbol

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		raw, want string // want "" means invalid
	}{
		{"BTCUSDT", "BTCUSDT"},
		{"btcusdt", "BTCUSDT"},
		{"  ethusdt\t\n", "ETHUSDT"},
		{"BTCUSDT_261225", "BTCUSDT_261225"},
		{"btcusdt_261225", "BTCUSDT_261225"},
		{"1000PEPEUSDT", "1000PEPEUSDT"},
		{"币安人生USDT", "币安人生USDT"},
		{"币安人生usdt", "币安人生USDT"},
		{"straße", "STRAßE"}, // only ASCII is upper-cased
		{strings.Repeat("A", MaxLen), strings.Repeat("A", MaxLen)},
		{"", ""},
		{"   ", ""},
		{strings.Repeat("A", MaxLen+1), ""},
		{strings.Repeat("X", 10000), ""},
		{`BTC"; DROP TABLE symbol_settings;--`, ""},
		{`BTC"USDT`, ""},
		{"BTC USDT", ""},
		{"BTC;USDT", ""},
		{"BTC-USDT", ""},
		{"BTC/USDT", ""},
		{"BTC\nUSDT", ""},
		{"BTC\x00USDT", ""},
		{"BTC\u202eUSDT", ""}, // right-to-left override
		{"BTC\u200bUSDT", ""}, // zero-width space
		{"btc@aggTrade", ""},
		{"\xff\xfe", ""},
		{"sqlite_master", "SQLITE_MASTER"}, // harmless: the table is prices_SQLITE_MASTER
	}
	for _, tt := range tests {
		got, err := Normalize(tt.raw)
		if tt.want == "" {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("Normalize(%q) = %q, %v; want an ErrInvalid", tt.raw, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.raw, got, err, tt.want)
		}
	}
}

func TestStream(t *testing.T) {
	tests := []struct{ sym, want string }{
		{"BTCUSDT", "btcusdt@aggTrade"},
		{"BTCUSDT_261225", "btcusdt_261225@aggTrade"},
		{"1000PEPEUSDT", "1000pepeusdt@aggTrade"},
		{"币安人生USDT", "%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9Fusdt@aggTrade"},
	}
	for _, tt := range tests {
		if got := Stream(tt.sym); got != tt.want {
			t.Errorf("Stream(%q) = %q, want %q", tt.sym, got, tt.want)
		}
	}
}

func TestQuote(t *testing.T) {
	for _, raw := range []string{"BTC\nUSDT", "a\x00b", "\u202eevil", strings.Repeat("币", 1000), "\xff"} {
		q := Quote(raw)
		if strings.ContainsAny(q, "\n\r\x00") || !isPrintableASCII(q) || len(q) > 450 {
			t.Errorf("Quote(%q) = %q: want one short printable ASCII token", raw, q)
		}
	}
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// FuzzNormalize checks that whatever Normalize accepts is safe to use as a
// table name, a URL path element and a status line, and is a fixed point.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"BTCUSDT", " btcusdt ", "BTCUSDT_261225", "币安人生USDT", `BTC"; DROP TABLE x;--`, "a\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		sym, err := Normalize(raw)
		if err != nil {
			if !isPrintableASCII(err.Error()) {
				t.Errorf("Normalize(%q) error %q is not printable ASCII", raw, err)
			}
			return
		}
		if sym == "" || utf8.RuneCountInString(sym) > MaxLen || strings.ContainsAny(sym, "\"'`;- \t\r\n\x00%/@?#") {
			t.Errorf("Normalize(%q) = %q: unsafe", raw, sym)
		}
		if again, err := Normalize(sym); err != nil || again != sym {
			t.Errorf("Normalize(Normalize(%q)) = %q, %v; want %q", raw, again, err, sym)
		}
		if s := Stream(sym); strings.ContainsAny(s, "/?# ") {
			t.Errorf("Stream(%q) = %q: not one path element", sym, s)
		}
	})
}
