package brood

import "testing"

func TestMasterGOMAXPROCS(t *testing.T) {
	unset := func(string) (string, bool) { return "", false }
	set := func(k string) (string, bool) { return "4", k == "GOMAXPROCS" }
	for _, c := range []struct {
		name   string
		single bool
		env    func(string) (string, bool)
		want   int
		ok     bool
	}{
		{"a master", false, unset, masterProcs, true},
		{"GOMAXPROCS set", false, set, 0, false},
		{"single-process mode", true, unset, 0, false},
	} {
		if n, ok := masterGOMAXPROCS(c.single, c.env); n != c.want || ok != c.ok {
			t.Errorf("%s: masterGOMAXPROCS = %d, %v; want %d, %v", c.name, n, ok, c.want, c.ok)
		}
	}
}
