package pipelinespec

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func mustWindows(t *testing.T, ws ...*captainv1.TimeWindow) []Window {
	t.Helper()
	c, err := CompileWindows(ws)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func win(kind captainv1.WindowKind, cron string, d time.Duration, tz string) *captainv1.TimeWindow {
	return &captainv1.TimeWindow{Kind: kind, Cron: cron, Duration: durationpb.New(d), TimeZone: tz}
}

const (
	allow = captainv1.WindowKind_WINDOW_KIND_ALLOW
	deny  = captainv1.WindowKind_WINDOW_KIND_DENY
)

func TestWindowOpen(t *testing.T) {
	// 2026-11-25 is a Wednesday.
	wed := func(h, m int) time.Time { return time.Date(2026, 11, 25, h, m, 0, 0, time.UTC) }
	officeHours := win(allow, "0 9 * * MON-FRI", 8*time.Hour, "UTC")
	noWednesdayNoon := win(deny, "0 12 * * WED", time.Hour, "UTC")
	cases := []struct {
		name string
		ws   []*captainv1.TimeWindow
		at   time.Time
		open bool
	}{
		{"no windows is always open", nil, wed(3, 0), true},
		{"inside allow window", []*captainv1.TimeWindow{officeHours}, wed(10, 0), true},
		{"at allow window start", []*captainv1.TimeWindow{officeHours}, wed(9, 0), true},
		{"at allow window end is closed", []*captainv1.TimeWindow{officeHours}, wed(17, 0), false},
		{"before allow window", []*captainv1.TimeWindow{officeHours}, wed(8, 59), false},
		{"deny inside allow closes", []*captainv1.TimeWindow{officeHours, noWednesdayNoon}, wed(12, 30), false},
		{"after deny reopens", []*captainv1.TimeWindow{officeHours, noWednesdayNoon}, wed(13, 0), true},
		{"deny only outside deny is open", []*captainv1.TimeWindow{noWednesdayNoon}, wed(11, 0), true},
		{"time zone shifts the window", []*captainv1.TimeWindow{win(allow, "0 9 * * *", time.Hour, "America/New_York")}, wed(14, 30), true},
		{"time zone shifts the window (closed in UTC hours)", []*captainv1.TimeWindow{win(allow, "0 9 * * *", time.Hour, "America/New_York")}, wed(9, 30), false},
		{"window spanning midnight", []*captainv1.TimeWindow{win(allow, "0 22 * * *", 4*time.Hour, "UTC")}, time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Open(mustWindows(t, tc.ws...), tc.at); got != tc.open {
				t.Fatalf("Open = %v, want %v", got, tc.open)
			}
		})
	}
}

func TestNextOpen(t *testing.T) {
	from := time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC) // Wednesday, inside the deny hour
	ws := mustWindows(t, win(allow, "0 9 * * MON-FRI", 8*time.Hour, "UTC"), win(deny, "0 12 * * WED", time.Hour, "UTC"))
	got, ok := NextOpen(ws, from, from.Add(30*24*time.Hour))
	if want := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC); !ok || !got.Equal(want) {
		t.Fatalf("NextOpen = %v %v, want %v (end of the deny window)", got, ok, want)
	}
	evening := time.Date(2026, 11, 27, 18, 0, 0, 0, time.UTC) // Friday evening
	got, ok = NextOpen(ws, evening, evening.Add(30*24*time.Hour))
	if want := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC); !ok || !got.Equal(want) {
		t.Fatalf("NextOpen = %v %v, want Monday 09:00 %v", got, ok, want)
	}
}
