package admin

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/wire"
)

// TestDashboardSubscribesToEveryEventType: the page's EVENT_TYPES lists
// every event type the master publishes (an SSE event of a type the page
// does not listen for would never show).
func TestDashboardSubscribesToEveryEventType(t *testing.T) {
	js := []byte(pageJS)
	m := regexp.MustCompile(`(?s)var EVENT_TYPES = \[(.*?)\];`).FindSubmatch(js)
	if m == nil {
		t.Fatal("no EVENT_TYPES in app.js")
	}
	var page []string
	for _, q := range regexp.MustCompile(`'([a-z-]+)'`).FindAllSubmatch(m[1], -1) {
		page = append(page, string(q[1]))
	}
	var want []string
	for _, et := range wire.EventTypes {
		want = append(want, string(et))
	}
	if !slices.Equal(page, want) {
		t.Fatalf("app.js EVENT_TYPES = %s\nwire.EventTypes  = %s", strings.Join(page, " "), strings.Join(want, " "))
	}
}
