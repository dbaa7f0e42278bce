package ipc

import "testing"

func TestPendingTakesRepliesOnlyFromTheReceiver(t *testing.T) {
	var p Pending[string]
	a := p.Add(1, 7)
	b := p.Add(2, 8)
	c := p.Add(3, 9)
	if p.Resolve(1, 8, "forged") {
		t.Fatal("request 1 to pid 7 took a reply from pid 8")
	}
	if !p.Resolve(1, 7, "answer") || <-a != "answer" {
		t.Fatal("request 1 did not take pid 7's reply")
	}
	if p.Resolve(1, 7, "again") {
		t.Fatal("a request took two replies")
	}
	if !p.Fail(2, "refused") || <-b != "refused" {
		t.Fatal("Fail did not reach request 2")
	}
	p.FailIf(func(pid uint32) bool { return pid == 9 }, "gone")
	if <-c != "gone" || p.Len() != 0 {
		t.Fatalf("FailIf left %d requests", p.Len())
	}
	d := p.Add(4, 1)
	p.Remove(4)
	if p.Resolve(4, 1, "late") || len(d) != 0 {
		t.Fatal("a removed request took a reply")
	}
}
