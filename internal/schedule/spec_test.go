package schedule_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		spec schedule.Spec
		want string // "" for a valid spec
	}{
		{"every", schedule.Spec{Name: "a.b_c-1", Every: time.Second}, ""},
		{"cron 5 fields", schedule.Spec{Name: "x", Cron: "0 3 * * *"}, ""},
		{"cron 6 fields", schedule.Spec{Name: "x", Cron: "*/10 * * * * *"}, ""},
		{"descriptor", schedule.Spec{Name: "x", Cron: "@every 5s"}, ""},
		{"time zone", schedule.Spec{Name: "x", Cron: "CRON_TZ=Asia/Shanghai 0 9 * * *"}, ""},
		{"all options", schedule.Spec{Name: "x", Every: time.Minute, Type: schedule.Agent,
			Immediate: true, Disable: true, Timeout: time.Second, AllowOverlap: true}, ""},

		{"no name", schedule.Spec{Every: time.Second},
			`schedule: Name is required`},
		{"bad name", schedule.Spec{Name: "a b", Every: time.Second},
			`schedule "a b": Name must only use letters, digits, '.', '_' and '-'`},
		{"neither", schedule.Spec{Name: "x"},
			`schedule "x": set exactly one of Every and Cron`},
		{"both", schedule.Spec{Name: "x", Every: time.Second, Cron: "* * * * *"},
			`schedule "x": set exactly one of Every and Cron`},
		{"negative every", schedule.Spec{Name: "x", Every: -time.Second},
			`schedule "x": Every must be positive, got -1s`},
		{"bad type", schedule.Spec{Name: "x", Every: time.Second, Type: 7},
			`schedule "x": unknown Type(7)`},
		{"negative timeout", schedule.Spec{Name: "x", Every: time.Second, Timeout: -time.Second},
			`schedule "x": Timeout must not be negative, got -1s`},
		{"field count", schedule.Spec{Name: "x", Cron: "* * *"},
			`schedule "x": cron "* * *": expected 5 to 6 fields, found 3: [* * *]`},
		{"out of range", schedule.Spec{Name: "x", Cron: "61 * * * *"},
			`schedule "x": cron "61 * * * *": end of range (61) above maximum (59): 61`},
		{"descriptor", schedule.Spec{Name: "x", Cron: "@fortnightly"},
			`schedule "x": cron "@fortnightly": unrecognized descriptor: @fortnightly`},
		{"bad zone", schedule.Spec{Name: "x", Cron: "CRON_TZ=Mars/Olympus 0 9 * * *"},
			`schedule "x": cron "CRON_TZ=Mars/Olympus 0 9 * * *": provided bad location Mars/Olympus: unknown time zone Mars/Olympus`},
		{"zone alone", schedule.Spec{Name: "x", Cron: "TZ=UTC"},
			`schedule "x": cron "TZ=UTC": time zone prefix must be followed by a space and an expression`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if strings.Contains(tt.want, "cron ") && errors.Unwrap(err) == nil {
				t.Fatalf("cron error %q does not wrap the parser's", err)
			}
		})
	}
}

func TestNew(t *testing.T) {
	dispatch := func(schedule.Tick) (int, error) { return 1, nil }
	_, err := schedule.New([]schedule.Spec{
		{Name: "a", Every: time.Second},
		{Name: "a", Cron: "* * * * *"},
		{Name: "b"},
	}, schedule.Options{Dispatch: dispatch})
	want := "schedule \"a\": duplicate name\nschedule \"b\": set exactly one of Every and Cron"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}

	_, err = schedule.New(nil, schedule.Options{})
	if want := "schedule: Options.Dispatch is required"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}

	s, err := schedule.New(nil, schedule.Options{Dispatch: dispatch})
	if err != nil || len(s.List()) != 0 {
		t.Fatalf("New with no specs: got %v, %v; want an empty scheduler", s, err)
	}
}

func TestTypeString(t *testing.T) {
	for typ, want := range map[schedule.Type]string{
		schedule.OneWorker:  "one-worker",
		schedule.AllWorkers: "all-workers",
		schedule.Agent:      "agent",
		9:                   "Type(9)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("Type(%d).String() = %q, want %q", int(typ), got, want)
		}
	}
}
