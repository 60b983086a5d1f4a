package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// State is the state of a virtual router (RFC 9568 §6.4), with keepalived's
// Fault state for a router whose tracked interface is down.
//
//	            startup, priority < 255          Master_Down_Timer fires
//	Initialize ─────────────────────────► Backup ─────────────────────────► Master
//	     │                                  ▲   higher priority, or equal      │
//	     │ startup, priority 255            └──── priority from a higher ──────┘
//	     └──────────────────────────────────────► address
//	any state ── tracked link down ──► Fault ── all links up ──► Initialize ──► …
//	any state ── shutdown ──► Initialize (a master first sends priority 0)
type State uint8

// The states. RFC 9568 renamed Master to Active; keepvip keeps the name that
// keepalived and RFC 5798 use.
const (
	StateInit State = iota
	StateBackup
	StateMaster
	StateFault
)

func (s State) String() string {
	switch s {
	case StateInit:
		return "INIT"
	case StateBackup:
		return "BACKUP"
	case StateMaster:
		return "MASTER"
	case StateFault:
		return "FAULT"
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// MarshalText makes states read as their names in JSON and YAML.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state name.
func (s *State) UnmarshalText(b []byte) error {
	for c := StateInit; c <= StateFault; c++ {
		if c.String() == string(b) {
			*s = c
			return nil
		}
	}
	return fmt.Errorf("unknown VRRP state %q", b)
}

// Transition is one change of state, kept for the status command.
type Transition struct {
	At     time.Time `json:"at"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	Reason string    `json:"reason"`
	// Took is how long the change took to apply: VIPs added and the first
	// GARP/NA sent when becoming master, VIPs removed when leaving it.
	Took Duration `json:"took"`
	// SinceAdvert, on a backup's takeover, is how long it had heard no
	// advert (or listened, if it never heard one) when it decided: with
	// Took, how long the failover took as this node saw it.
	SinceAdvert Duration `json:"sinceAdvert,omitzero"`
	// Announced counts the GARPs and unsolicited NAs sent while master,
	// this transition's bursts and refreshes so far.
	Announced int `json:"announced,omitempty"`
}

// Duration is a time.Duration that reads as "100ms" in JSON and YAML.
type Duration time.Duration

// MarshalText writes the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses what MarshalText wrote.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

func (d Duration) String() string { return time.Duration(d).String() }

// Status is a snapshot of one virtual router.
type Status struct {
	Name      string         `json:"name"`
	Interface string         `json:"interface"`
	VRID      uint8          `json:"vrid"`
	Family    string         `json:"family"`
	Version   uint8          `json:"version"`
	State     State          `json:"state"`
	Since     time.Time      `json:"since"`
	Fault     string         `json:"fault,omitempty"`
	Priority  uint8          `json:"priority"`
	Source    netip.Addr     `json:"source"`
	Peers     []netip.Addr   `json:"unicastPeers,omitempty"`
	VIPs      []netip.Prefix `json:"vips"`
	// VIPsInstalled reports whether this router has its VIPs on the
	// interface now.
	VIPsInstalled bool `json:"vipsInstalled"`
	// Master is the current master as far as this router knows: itself
	// when master, the sender of the adverts it follows when backup.
	Master               netip.Addr `json:"master"`
	MasterPriority       uint8      `json:"masterPriority"`
	AdvertInterval       Duration   `json:"advertInterval"`
	MasterAdvertInterval Duration   `json:"masterAdvertInterval"`
	// MasterDownInterval is 3 × MasterAdvertInterval + Skew_Time.
	MasterDownInterval Duration `json:"masterDownInterval"`
	Preempt            bool     `json:"preempt"`
	// LastAdvert is when the router last followed the master's advert
	// (Backup); zero since startup otherwise.
	LastAdvert      time.Time         `json:"lastAdvertReceived"`
	AdvertsSent     uint64            `json:"advertsSent"`
	AdvertsReceived uint64            `json:"advertsReceived"`
	Drops           map[string]uint64 `json:"drops,omitempty"`
	Transitions     []Transition      `json:"transitions"`
	Errors          []string          `json:"errors,omitempty"`
}
