package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/vrrp"
)

func printStatus(w io.Writer, s *daemon.Status, format string, now time.Time) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	case "yaml":
		b, err := yaml.Marshal(s)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table":
		return printTable(w, s, now)
	}
	return usageError{fmt.Sprintf("status: -o %q: want table, json or yaml", format)}
}

func printTable(w io.Writer, s *daemon.Status, now time.Time) error {
	if h := s.Handover; h != nil && h.WaitingFor != 0 {
		if h.InPlace {
			fmt.Fprintf(w, "keepvip %s, waiting to take over from keepvip pid %d on this host, in place: when it stops, its VIPs stay where they are and this keepvip runs them\n", s.Version, h.WaitingFor)
		} else {
			fmt.Fprintf(w, "keepvip %s, waiting for keepvip pid %d on this host to stop; it cannot hand over in place (an older keepvip, or it could not listen for a successor): its VIPs will be handed off to the other routers, and this keepvip starts on its own\n", s.Version, h.WaitingFor)
		}
		return nil
	}
	fmt.Fprintf(w, "keepvip %s, configuration %s loaded %s ago\n", s.Version, s.ConfigFile, ago(now, s.ConfigLoaded))
	if h := s.Handover; h != nil {
		if !h.TookOver.IsZero() {
			fmt.Fprintf(w, "took over from the keepvip before it on this host %s ago, master of %s with the VIPs in place\n", ago(now, h.TookOver), orNone(h.Masters))
		}
		if h.Successor != 0 {
			fmt.Fprintf(w, "keepvip pid %d waits to take over when this one stops (VIPs stay where they are)\n", h.Successor)
		}
		if h.Unavailable != "" {
			fmt.Fprintf(w, "cannot be replaced in place (a successor will find the VIPs handed off as usual): %s\n", h.Unavailable)
		}
	}
	if k := s.Kubernetes; k != nil {
		api := k.APIServer
		if !k.APIServerSince.IsZero() {
			api += " (for " + ago(now, k.APIServerSince) + ")"
		}
		fmt.Fprintf(w, "Kubernetes: node %s, ConfigMap %s, synced %t, %d Service(s) followed, last change applied %s ago\n",
			k.Node, k.ConfigMap, k.Synced, k.Services, ago(now, k.LastApplied))
		fmt.Fprintf(w, "API server: %s\n", api)
		if k.WatchError != "" && now.Sub(k.WatchErrorAt) < 2*time.Minute {
			fmt.Fprintf(w, "last watch error (%s ago, retried): %s\n", ago(now, k.WatchErrorAt), k.WatchError)
		}
	}
	if m := s.Metrics; m != nil && !m.Serving {
		held := ""
		if len(m.Holders) > 0 {
			uids := make([]string, len(m.Holders))
			for i, u := range m.Holders {
				uids[i] = fmt.Sprintf("uid %d", u)
			}
			held = "; the port is held by a socket of " + strings.Join(uids, ", ")
		}
		fmt.Fprintf(w, "\nmetrics: not serving on %s for %s, retrying (attempt %d): %s%s\n", m.Addr, ago(now, m.Since), m.Attempts, m.Error, held)
	}
	if len(s.ConfigErrors) > 0 {
		if s.Kubernetes != nil {
			fmt.Fprintln(w, "\nCONFIGURATION ERRORS (these entries are not applied; the others are):")
		} else {
			fmt.Fprintln(w, "\nCONFIGURATION ERRORS (the last good configuration is in force):")
		}
		for _, e := range s.ConfigErrors {
			fmt.Fprintln(w, "  "+strings.TrimSpace(e))
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tINTERFACE\tVRID\tSTATE\tPRIO\tMASTER\tADVERT\tSINCE\tVIPS")
	for _, in := range s.Instances {
		master := "-"
		if in.Master.IsValid() {
			master = fmt.Sprintf("%s (%d)", in.Master, in.MasterPriority)
			if in.Master == in.Source && in.State == vrrp.StateMaster {
				master = "self"
			}
		}
		state := in.State.String()
		if in.Fault != "" {
			state += " (" + in.Fault + ")"
		}
		vips := make([]string, len(in.VIPs))
		for i, v := range in.VIPs {
			vips[i] = v.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%s v%d\t%s\t%d\t%s\t%s\t%s\t%s\n", in.Name, in.Interface, in.VRID, in.Family, in.Version,
			state, in.Priority, master, advert(in), ago(now, in.Since), strings.Join(vips, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printVirtualServers(w, s, now)
	printRouting(w, s.Routing, now)
	printConnSync(w, s.ConnectionSync)
	for _, in := range s.Instances {
		fmt.Fprintf(w, "\n%s: source %s, %s, master down interval %s, adverts sent %d received %d\n",
			in.Name, in.Source, mode(in), in.MasterDownInterval, in.AdvertsSent, in.AdvertsReceived)
		if len(in.Drops) > 0 {
			reasons := make([]string, 0, len(in.Drops))
			for r := range in.Drops {
				reasons = append(reasons, r)
			}
			slices.Sort(reasons)
			parts := make([]string, len(reasons))
			for i, r := range reasons {
				parts[i] = fmt.Sprintf("%s=%d", r, in.Drops[r])
			}
			fmt.Fprintf(w, "  dropped: %s\n", strings.Join(parts, " "))
		}
		for _, t := range lastN(in.Transitions, 5) {
			extra := ""
			if t.Announced > 0 {
				extra = fmt.Sprintf(" (%d GARP/NA sent)", t.Announced)
			}
			fmt.Fprintf(w, "  %s  %-6s -> %-6s  took %-9s %s%s\n", t.At.Local().Format("15:04:05.000"), t.From, t.To, t.Took, t.Reason, extra)
		}
		for _, e := range in.Errors {
			fmt.Fprintf(w, "  error: %s\n", e)
		}
	}
	return nil
}

// printVirtualServers prints IPVS as the kernel has it, with health.
func printVirtualServers(w io.Writer, s *daemon.Status, now time.Time) {
	if len(s.VirtualServers) == 0 && s.IPVS == "not used" {
		return
	}
	fmt.Fprintf(w, "\nIPVS: %s\n", s.IPVS)
	for _, warn := range s.IPVSWarnings {
		fmt.Fprintf(w, "  warning: %s\n", warn)
	}
	for _, vs := range s.VirtualServers {
		extra := ""
		if vs.Persistence != "" {
			extra = ", persistence " + vs.Persistence
		}
		fmt.Fprintf(w, "\n%s  %s  %s%s, unhealthy: %s\n", vs.Service, vs.Name, vs.Scheduler, extra, vs.Unhealthy)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  REAL SERVER\tFWD\tWEIGHT\tACTIVE\tINACTIVE\tHEALTH\tSINCE\tREASON")
		for _, r := range vs.RealServers {
			weight := fmt.Sprint(r.Weight)
			switch {
			case !r.InKernel:
				weight = "-"
			case r.Weight != r.ConfiguredWeight:
				weight = fmt.Sprintf("%d (of %d)", r.Weight, r.ConfiguredWeight)
			}
			since := "-"
			if !r.LastChange.IsZero() {
				since = ago(now, r.LastChange)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", r.Address, r.Forward, weight, r.Active, r.Inactive, r.Health, since, r.Reason)
		}
		tw.Flush()
	}
}

func advert(in vrrp.Status) string {
	if in.State == vrrp.StateBackup && in.MasterAdvertInterval != in.AdvertInterval && in.MasterAdvertInterval != 0 {
		return fmt.Sprintf("%s (master %s)", in.AdvertInterval, in.MasterAdvertInterval)
	}
	return in.AdvertInterval.String()
}

func mode(in vrrp.Status) string {
	if len(in.Peers) == 0 {
		return "multicast"
	}
	peers := make([]string, len(in.Peers))
	for i, p := range in.Peers {
		peers[i] = p.String()
	}
	return "unicast to " + strings.Join(peers, ",")
}

func lastN[T any](s []T, n int) []T {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// printConnSync prints the IPVS connection synchronisation.
func printConnSync(w io.Writer, c *daemon.ConnSyncStatus) {
	if c == nil {
		return
	}
	fmt.Fprintf(w, "\nCONNECTION SYNC: %s daemon, instance %s is %s\n", c.Role, c.Instance, c.State)
	daemons := "none"
	if len(c.Daemons) > 0 {
		daemons = strings.Join(c.Daemons, "; ")
	}
	fmt.Fprintf(w, "  kernel's sync daemons: %s\n", daemons)
	fmt.Fprintf(w, "  connections: %d local, %d synced from a master\n", c.Local, c.Synced)
	if c.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", c.Error)
	}
}

// printRouting prints the BGP sessions and the announced routes.
func printRouting(w io.Writer, r *daemon.RoutingStatus, now time.Time) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\nROUTING: %s\n", r.Exporter)
	if len(r.Peers) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tASN\tSTATE\tSINCE\tSENT\tRECEIVED\tLAST ERROR")
		for _, p := range r.Peers {
			last := p.LastError
			if last == "" {
				last = "-"
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%d\t%d\t%s\n", p.Address, p.ASN, p.State, ago(now, p.Since), p.Advertised, p.Received, last)
		}
		tw.Flush()
	}
	if len(r.BFD) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  BFD PEER\tSTATE\tSINCE\tTX\tDETECT\tFLAPS\tLAST DOWN / ERROR")
		for _, b := range r.BFD {
			state := b.State
			if b.Multihop {
				state += " (multihop)"
			}
			detect := "-"
			if b.DetectionTime > 0 {
				detect = b.DetectionTime.String()
			}
			last := b.Diag
			if b.LastError != "" {
				last = b.LastError
			}
			if last == "" {
				last = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\n", b.Remote, state, ago(now, b.Since), b.TxInterval, detect, b.Flaps, last)
		}
		tw.Flush()
	}
	if len(r.Announced) == 0 {
		fmt.Fprintln(w, "  announced: nothing")
	}
	for _, a := range r.Announced {
		fmt.Fprintf(w, "  announced: %s\n", a)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", r.Error)
	}
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "no instance"
	}
	return strings.Join(names, ", ")
}
