package schedule_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

func TestAlignedTicksAreMultiplesSinceTheEpoch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// t0 is 946684800000 ms since the epoch: the first multiple of 700ms
		// after it is t0+600ms, not t0+700ms as start+Every would give.
		h := start(t, []schedule.Spec{{Name: "fleet", Every: 700 * time.Millisecond, Aligned: true}}, schedule.Options{})
		h.noTick()
		h.advance(600 * time.Millisecond)
		for k := 0; k < 5; k++ {
			tk := h.next()
			want := t0.Add(600*time.Millisecond + time.Duration(k)*700*time.Millisecond)
			if !tk.At.Equal(want) || tk.At.UnixNano()%int64(700*time.Millisecond) != 0 {
				t.Fatalf("tick %d at %v, want %v (a multiple of 700ms since the epoch)", k+1, tk.At, want)
			}
			h.ok(tk)
			h.advance(700 * time.Millisecond)
		}
	})
}

func TestTickThatRunsElsewhereIsASkip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "fleet", Every: time.Second, Aligned: true}}, schedule.Options{})
		h.setReply(0, fmt.Errorf("claimed by node b: %w", schedule.ErrElsewhere))
		h.advance(time.Second)
		h.next()
		h.advance(500 * time.Millisecond) // a retry would come within the retry interval
		h.noTick()
		st := h.status("fleet")
		if st.Skips != 1 || st.Runs != 0 || st.Running != 0 || st.Waiting != 0 || st.LastResult != "skipped: claimed by node b: the tick runs elsewhere" {
			t.Fatalf("status %+v", st)
		}
		h.logged("level=INFO", "schedule tick runs elsewhere", "schedule=fleet")
		// The next tick is dispatched as usual.
		h.setReply(1, nil)
		h.advance(500 * time.Millisecond)
		h.ok(h.next())
		if st := h.status("fleet"); st.Runs != 1 || st.Skips != 1 {
			t.Fatalf("after a tick that ran here: %+v", st)
		}
	})
}
