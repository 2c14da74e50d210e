// Package symbol owns the rules for Binance symbol names: how a name typed
// into symbol_settings becomes the canonical symbol, the stream name and the
// SQL identifier of its table.
package symbol

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLen is the longest symbol accepted, in characters. Binance's longest are
// around 17; the slack keeps future names working without letting a pasted
// paragraph become a table name.
const MaxLen = 32

// ErrInvalid is wrapped by every error Normalize returns.
var ErrInvalid = errors.New("invalid symbol")

// Normalize trims surrounding white space and upper-cases the ASCII letters of
// raw, then checks that the result can be a Binance symbol: 1 to MaxLen
// characters, each a letter (of any script), a digit or '_'. Only such a name
// ever reaches SQL or a URL. The error quotes raw safely for a log line.
func Normalize(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	if !utf8.ValidString(s) {
		return "", fmt.Errorf("%w %s: not UTF-8", ErrInvalid, Quote(raw))
	}
	if n := utf8.RuneCountInString(s); n > MaxLen {
		return "", fmt.Errorf("%w %s: %d characters, at most %d", ErrInvalid, Quote(raw), n, MaxLen)
	}
	for _, r := range s {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return "", fmt.Errorf("%w %s: character %+q not allowed", ErrInvalid, Quote(raw), r)
		}
	}
	return upperASCII(s), nil
}

// Stream returns the aggTrade stream name of a normalized symbol as it goes
// into a URL path: ASCII letters lower-cased (Binance ignores upper-case
// streams) and everything else percent-encoded.
func Stream(sym string) string {
	return url.PathEscape(lowerASCII(sym) + "@aggTrade")
}

// Quote renders any string, however hostile, as one printable ASCII token
// of bounded length, for log lines and the status page.
func Quote(s string) string {
	const max = 40
	if utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max]) + "..."
	}
	return fmt.Sprintf("%+q", s)
}

func upperASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, s)
}

func lowerASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return r
	}, s)
}
