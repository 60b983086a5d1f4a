package clock

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Precise is the wall clock with timers backed by Linux timerfds. A Go
// timer fires when the runtime next polls, and the runtime sleeps in
// epoll_wait with a timeout in whole milliseconds: measured here, a median of
// 0.6 ms and up to 1 ms late. A timerfd is a file the netpoller waits on, so
// the kernel's high-resolution timer wakes it within microseconds, as
// keepalived's own scheduler does with its timerfd. That matters at VRRP's
// shortest advert interval (10 ms).
//
// Each timer holds a file descriptor and a goroutine until Close. If a
// timerfd cannot be created, NewTimer falls back to a Go timer.
type Precise struct{}

// Now returns time.Now().
func (Precise) Now() time.Time { return time.Now() }

// NewTimer returns a timerfd-backed timer firing after d.
func (Precise) NewTimer(d time.Duration) Timer {
	t, err := newFDTimer()
	if err != nil {
		return realTimer{time.NewTimer(d)}
	}
	t.Reset(d)
	return t
}

type fdTimer struct {
	f *os.File
	c chan time.Time

	mu       sync.Mutex
	armed    bool
	deadline time.Time
}

func newFDTimer() (*fdTimer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating timerfd: %w", err)
	}
	t := &fdTimer{f: os.NewFile(uintptr(fd), "timerfd"), c: make(chan time.Time, 1)}
	go t.wait()
	return t, nil
}

// wait delivers expirations until the file is closed. An expiration that
// belongs to an earlier arming (read just before a Reset) is recognised
// because it comes before the current deadline, and dropped.
func (t *fdTimer) wait() {
	buf := make([]byte, 8)
	for {
		if _, err := t.f.Read(buf); err != nil {
			return
		}
		now := time.Now()
		t.mu.Lock()
		if t.armed && !now.Before(t.deadline) {
			t.armed = false
			select {
			case t.c <- now:
			default:
			}
		}
		t.mu.Unlock()
	}
}

func (t *fdTimer) C() <-chan time.Time { return t.c }

func (t *fdTimer) set(d time.Duration) {
	var spec unix.ItimerSpec
	if d >= 0 {
		spec.Value = unix.NsecToTimespec(max(int64(d), 1)) // 0 would disarm
	}
	if rc, err := t.f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.TimerfdSettime(int(fd), 0, &spec, nil) })
	}
}

func (t *fdTimer) drain() {
	select {
	case <-t.c:
	default:
	}
}

func (t *fdTimer) Reset(d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.armed
	t.armed = true
	t.deadline = time.Now().Add(d)
	t.drain()
	t.set(d)
	return was
}

func (t *fdTimer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.armed
	t.armed = false
	t.drain()
	t.set(-1)
	return was
}

// Close releases the file descriptor and ends the timer's goroutine.
func (t *fdTimer) Close() error {
	t.Stop()
	return t.f.Close()
}
