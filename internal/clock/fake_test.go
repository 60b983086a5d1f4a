package clock

import (
	"testing"
	"time"
)

func TestFakeTimerFiresOnlyWhenReached(t *testing.T) {
	start := time.Unix(1000, 0)
	f := NewFake(start)
	tm := f.NewTimer(100 * time.Millisecond)
	f.Advance(99 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("timer fired before its deadline")
	default:
	}
	f.Advance(time.Millisecond)
	select {
	case at := <-tm.C():
		if want := start.Add(100 * time.Millisecond); !at.Equal(want) {
			t.Errorf("fired with %v; want %v", at, want)
		}
	default:
		t.Fatal("timer did not fire at its deadline")
	}
}

func TestFakeTimerResetDiscardsPendingValue(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tm := f.NewTimer(time.Second)
	f.Advance(time.Second)
	if tm.Reset(time.Second) {
		t.Error("Reset of a fired timer reported it was armed")
	}
	select {
	case <-tm.C():
		t.Fatal("stale value delivered after Reset")
	default:
	}
	if !tm.Stop() {
		t.Error("Stop of an armed timer reported it was not armed")
	}
	f.Advance(time.Hour)
	select {
	case <-tm.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if _, ok := f.Next(); ok {
		t.Error("Next reports an armed timer after Stop")
	}
}
