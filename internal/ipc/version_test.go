package ipc

import "testing"

func TestNegotiate(t *testing.T) {
	if lo, hi := Speaks(); lo != MinVersion || hi != Version {
		t.Fatalf("Speaks() = %d, %d without an override; want %d, %d", lo, hi, MinVersion, Version)
	}
	for _, c := range []struct {
		lo, hi int
		want   int
		err    string
	}{
		{1, 3, 3, ""},
		{1, 2, 2, ""}, // a master without direct channels
		{1, 1, 1, ""}, // a master that speaks only 1 (older than ranges)
		{2, 9, 3, ""}, // a newer master that still speaks ours
		{1, 9, 3, ""},
		{4, 9, 0, "the master speaks IPC protocol 4 to 9, this binary speaks 1 to 3"},
		{7, 7, 0, "the master speaks IPC protocol 7, this binary speaks 1 to 3"},
		{0, 0, 0, "the master speaks IPC protocol 0, this binary speaks 1 to 3"},
		{2, 1, 0, "the master speaks IPC protocol 2 to 1, this binary speaks 1 to 3"},
	} {
		v, err := Negotiate(c.lo, c.hi)
		if v != c.want || (err == nil) != (c.err == "") || (err != nil && err.Error() != c.err) {
			t.Errorf("Negotiate(%d, %d) = %d, %v; want %d, %q", c.lo, c.hi, v, err, c.want, c.err)
		}
	}
}

func TestSpeaksOverride(t *testing.T) {
	defer func(v string) { versionOverride = v }(versionOverride)
	versionOverride = "7"
	if lo, hi := Speaks(); lo != 7 || hi != 7 {
		t.Fatalf("Speaks() with override 7 = %d, %d", lo, hi)
	}
	if _, err := Negotiate(MinVersion, Version); err == nil || err.Error() != "the master speaks IPC protocol 1 to 3, this binary speaks 7" {
		t.Fatalf("Negotiate with override 7: %v", err)
	}
	versionOverride = "bogus"
	if lo, hi := Speaks(); lo != MinVersion || hi != Version {
		t.Fatalf("Speaks() with a bad override = %d, %d; want the defaults", lo, hi)
	}
}
