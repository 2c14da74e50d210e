package reliability

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestHostileFrames sends frames a broken or hostile exchange could send on a
// live stream: each is skipped without storing anything or breaking the
// connection, except the 2 MiB frame, which closes it; the store redials and
// every real trade is stored, nothing else.
func TestHostileFrames(t *testing.T) {
	skipShort(t)
	const sym, other = "HOSTUSDT", "OTHERUSDT"
	f := newFixture(t, "", sym, other)
	f.env["LOG_LEVEL"] = "debug" // every ignored frame is logged: more lines that could be forged
	s := f.start(t)
	db := openDB(t, f.dbPath)
	enable(t, db, []string{sym})
	waitFor(t, "subscription", 15*time.Second, func() bool { return f.x.Subscribers(sym) == 1 })
	f.x.Publish(sym, 10)
	stored := func() int {
		var n int
		db.QueryRow(fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, sym)).Scan(&n)
		return n
	}
	waitFor(t, "first trades", 15*time.Second, func() bool { return stored() == 10 })

	last := f.x.Trades(sym)
	fake := last[len(last)-1].ID + 1_000_000 // an id that must never be stored
	now := time.Now().UnixMilli()
	frame := func(fields string) string {
		return `{"e":"aggTrade","E":` + fmt.Sprint(now) + `,` + fields + `,"q":"1","f":1,"l":1,"m":true}`
	}
	ok := fmt.Sprintf(`"a":%d,"s":"%s","T":%d`, fake, sym, now)
	deep := strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)
	deepObj := strings.Repeat(`{"x":`, 5000) + "1" + strings.Repeat("}", 5000)
	forged := "\ntime=2026-01-01T00:00:00.000Z level=ERROR msg=\"forged line\"\n"
	frames := map[string]string{
		"malformed":               `{"e":"aggTrade","a":` + forged,
		"not JSON, forged line":   forged,
		"invalid UTF-8":           "{\"e\":\"aggTrade\xff\xfe\"," + ok + `,"p":"1.0"}`,
		"empty":                   "",
		"null":                    "null",
		"array":                   "[1,2,3]",
		"string":                  `"aggTrade"`,
		"deep array as price":     `{"e":"aggTrade",` + ok + `,"p":` + deep + `}`,
		"deep object as price":    `{"e":"aggTrade",` + ok + `,"p":` + deepObj + `}`,
		"deep envelope":           `{"stream":"x","data":` + deep + `}`,
		"double envelope":         `{"stream":"x","data":{"stream":"y","data":` + frame(ok+`,"p":"1.0"`) + `}}`,
		"id too large":            frame(fmt.Sprintf(`"a":99999999999999999999999,"s":"%s","T":%d,"p":"1.0"`, sym, now)),
		"id negative":             frame(fmt.Sprintf(`"a":-5,"s":"%s","T":%d,"p":"1.0"`, sym, now)),
		"id zero":                 frame(fmt.Sprintf(`"a":0,"s":"%s","T":%d,"p":"1.0"`, sym, now)),
		"id fraction":             frame(fmt.Sprintf(`"a":%d.5,"s":"%s","T":%d,"p":"1.0"`, fake, sym, now)),
		"id exponent":             frame(fmt.Sprintf(`"a":1e15,"s":"%s","T":%d,"p":"1.0"`, sym, now)),
		"id string":               frame(fmt.Sprintf(`"a":"%d","s":"%s","T":%d,"p":"1.0"`, fake, sym, now)),
		"time 1e400":              frame(fmt.Sprintf(`"a":%d,"s":"%s","T":1e400,"p":"1.0"`, fake, sym)),
		"time negative":           frame(fmt.Sprintf(`"a":%d,"s":"%s","T":-1,"p":"1.0"`, fake, sym)),
		"time too large":          frame(fmt.Sprintf(`"a":%d,"s":"%s","T":92233720368547758070,"p":"1.0"`, fake, sym)),
		"price NaN":               frame(ok + `,"p":"NaN"`),
		"price Inf":               frame(ok + `,"p":"Inf"`),
		"price +Inf":              frame(ok + `,"p":"+Inf"`),
		"price 0":                 frame(ok + `,"p":"0"`),
		"price 0.000":             frame(ok + `,"p":"0.000"`),
		"price negative":          frame(ok + `,"p":"-1.5"`),
		"price empty":             frame(ok + `,"p":""`),
		"price dot":               frame(ok + `,"p":"."`),
		"price exponent":          frame(ok + `,"p":"1e5"`),
		"price hex":               frame(ok + `,"p":"0x10"`),
		"price two dots":          frame(ok + `,"p":"1.2.3"`),
		"price 1e400 digits":      frame(ok + `,"p":"1` + strings.Repeat("0", 400) + `"`),
		"price number":            frame(ok + `,"p":1.5`),
		"price null":              frame(ok + `,"p":null`),
		"price missing":           frame(ok),
		"price with forged line":  frame(ok + `,"p":"1.0` + `\ntime=2026-01-01T00:00:00Z level=ERROR msg=forged"`),
		"other symbol":            frame(fmt.Sprintf(`"a":%d,"s":"%s","T":%d,"p":"1.0"`, fake, other, now)),
		"lower-case symbol":       frame(fmt.Sprintf(`"a":%d,"s":"%s","T":%d,"p":"1.0"`, fake, strings.ToLower(sym), now)),
		"unknown event":           `{"e":"trade",` + ok + `,"p":"1.0"}`,
		"not an event, forged id": `{"result":null,"id":"` + strings.ReplaceAll(forged, "\n", `\n`) + `"}`,
	}
	names := make([]string, 0, len(frames))
	for name := range frames {
		names = append(names, name)
	}
	sort.Strings(names)
	attempts := len(f.x.Attempts())
	for _, name := range names {
		want := stored() + 1
		f.x.SendRaw(sym, []byte(frames[name]))
		f.x.Publish(sym, 1) // a real trade right behind it
		waitFor(t, "the trade after frame "+name, 15*time.Second, func() bool { return stored() >= want })
		if s.exited() {
			t.Fatalf("server exited after frame %s: %v", name, s.err)
		}
	}
	if n := len(f.x.Attempts()); n != attempts {
		t.Errorf("%d reconnects during the bad frames; a bad frame must not cost the connection", n-attempts)
	}

	// 2 MiB: over the 1 MiB read limit, the connection is closed and redialled.
	big := frame(ok + `,"p":"1.0","pad":"` + strings.Repeat("x", 2<<20) + `"`)
	f.x.SendRaw(sym, []byte(big))
	sent := time.Now()
	waitFor(t, "the redial after a 2 MiB frame", 30*time.Second, func() bool {
		return len(f.x.Attempts()) > attempts && f.x.Subscribers(sym) == 1
	})
	redial := time.Since(sent)
	f.x.Publish(sym, 5)
	sum, took := waitComplete(t, db, f.x, []string{sym}, 30*time.Second)
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	if got, want := strings.Join(tables, ","), "prices_"+sym+",sqlite_sequence,symbol_settings"; got != want {
		t.Errorf("tables %s, want %s", got, want)
	}
	lines := checkLogLines(t, s.stdout.String())
	if !strings.Contains(s.stdout.String(), "frame over 1 MiB") {
		t.Errorf("no disconnect for the 2 MiB frame in the log")
	}
	if s.stderr.String() != "" {
		t.Errorf("stderr: %s", clip(s.stderr.String()))
	}
	figure(t, "%d hostile frames + one of 2 MiB: %v, nothing else stored; bad frames cost 0 reconnects, the 2 MiB frame 1 (redialled in %v); complete in %v; %d log lines all well-formed",
		len(frames), sum, redial.Round(time.Millisecond), took.Round(time.Millisecond), lines)
}

// statusLineRE is the grammar of a symbol line of the status page: a valid
// symbol, or a quoted printable-ASCII token, then the state and the range.
var statusLineRE = regexp.MustCompile(`^(?:[\p{L}\p{N}_]+|"(?:[ !#-\[\]-~]|\\.)*") +(?:on|off) +(?:\(no data yet\)|\(invalid symbol, ignored\)|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ->  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$`)

// TestHostileSymbolNames writes hostile names into symbol_settings with
// parameter binding: only the well-formed ones get a table, nothing breaks,
// and no name can forge a line of the status page or of the log.
func TestHostileSymbolNames(t *testing.T) {
	skipShort(t)
	f := newFixture(t, "", "BTCUSDT")
	s := f.start(t)
	db := openDB(t, f.dbPath)
	forged := "time=2026-01-01T00:00:00.000Z level=ERROR msg=forged"
	hostile := []any{
		"BTC\x01USDT", "BTC\nUSDT", "BTCUSDT\n" + forged, "\n" + forged + "\n", "BTCUSDT\r\nStatus:     stopped",
		"\nZZZUSDT     on      2020-01-01 00:00:00  ->  2020-01-01 00:00:00", "BTC\tUSDT", "BTC USDT",
		`BTC"USDT`, `BTC'USDT`, `X"; DROP TABLE symbol_settings; --`, `"prices_BTCUSDT"`,
		strings.Repeat("A", 10240), strings.Repeat("币", 5000), "DROP TABLE symbol_settings",
		"BTC\x00USDT", "\x00", "BTC\x00", "\x00BTC", "BTC\u200bUSDT", "\u202eTDSUCTB", "BTC\u0301USDT",
		"BTC/USDT", "../../etc/passwd", "btcusdt?x=1", "btc%2Fusdt", "\xff\xfe", "", "   ", "\x1b[31mRED\x1b[0m",
		[]byte("BLOB\x00USDT"), nil,
		// Well-formed: tried as symbols (spec), each gets its own prices_ table.
		"SELECT", "sqlite_master", "sqlite_sequence", "prices_BTCUSDT", "ＢＴＣＵＳＤＴ", 42, "BTCUSDT",
	}
	wantTables := []string{"prices_42", "prices_BTCUSDT", "prices_PRICES_BTCUSDT", "prices_SELECT",
		"prices_SQLITE_MASTER", "prices_SQLITE_SEQUENCE", "prices_ＢＴＣＵＳＤＴ", "sqlite_sequence", "symbol_settings"}
	for _, name := range hostile {
		if _, err := db.Exec(`INSERT OR IGNORE INTO symbol_settings (symbol) VALUES (?)`, name); err != nil {
			t.Fatalf("insert %q: %v", name, err)
		}
	}
	var rowsIn int
	db.QueryRow(`SELECT count(*) FROM symbol_settings`).Scan(&rowsIn)
	waitFor(t, "BTCUSDT subscribed", 30*time.Second, func() bool { return f.x.Subscribers("BTCUSDT") == 1 })
	f.x.Publish("BTCUSDT", 20)
	waitComplete(t, db, f.x, []string{"BTCUSDT"}, 30*time.Second)
	var tables []string
	waitFor(t, "the tables of the well-formed names", 30*time.Second, func() bool {
		tables = tables[:0]
		rows, err := db.Query(`SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name`)
		if err != nil {
			return false
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			rows.Scan(&n)
			tables = append(tables, n)
		}
		return len(tables) >= len(wantTables)
	})
	if got, want := strings.Join(tables, ","), strings.Join(wantTables, ","); got != want {
		t.Errorf("tables:\n got %s\nwant %s", got, want)
	}
	for _, a := range f.x.Attempts() {
		if !regexp.MustCompile(`^/market/ws/[^/?#A-Z]+@aggTrade$`).MatchString(a.Path) {
			t.Errorf("handshake on path %q", a.Path)
		}
	}

	code, page, err := get(t, s.url("/status"), 10*time.Second)
	if err != nil || code != 200 {
		t.Fatalf("/status: %d %v", code, err)
	}
	lines := strings.Split(strings.TrimSuffix(page, "\n"), "\n")
	head := []string{"Binance Tick Store", "", "Status:     running"}
	for i, h := range head {
		if i >= len(lines) || lines[i] != h {
			t.Fatalf("status page header line %d = %q, want %q\n%s", i, lines[i], h, page)
		}
	}
	if !regexp.MustCompile(`^Uptime:     (\d+d )?(\d+h )?\d+m$`).MatchString(lines[3]) || lines[4] != "" {
		t.Errorf("status page lines 4-5 = %q, %q", lines[3], lines[4])
	}
	symLines := lines[5:]
	for _, line := range symLines {
		if !statusLineRE.MatchString(line) {
			t.Errorf("status line does not match the grammar: %q", clip(line))
		}
	}
	if code, _, err := get(t, s.url("/healthz"), 10*time.Second); err != nil || code != 200 {
		t.Errorf("/healthz: %d %v", code, err)
	}
	if s.exited() {
		t.Fatalf("server exited: %v", s.err)
	}
	n := checkLogLines(t, s.stdout.String())
	figure(t, "%d hostile names (%d settings rows): tables = only the %d well-formed names'; %d status lines all match the grammar; %d log lines all well-formed; handshake paths all /market/ws/<lower>@aggTrade",
		len(hostile), rowsIn, len(wantTables)-2, len(symLines), n)
}
