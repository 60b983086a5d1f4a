package vrrp

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FilterTable is the nftables table (family inet) keepvip owns. It exists
// only while some master runs in non-accept mode, and holds nothing else.
const FilterTable = "keepvip"

// nftFilter implements Accept_Mode false (RFC 9568 §6.1): a non-owner
// master must not accept packets addressed to its VIPs, while it still
// answers ARP and neighbour discovery for them. As keepalived does, the VIPs
// stay on the interface and an nftables input chain drops IP packets to
// them, letting ICMPv6 neighbour solicitations and advertisements through.
type nftFilter struct {
	mu      sync.Mutex
	table   *nftables.Table
	set4    *nftables.Set
	set6    *nftables.Set
	blocked map[netip.Addr]bool
	// adopted: the table is one a keepvip that handed over left (see
	// adopt); what it blocks that this one does not goes at settle.
	adopted bool
}

func newNFTFilter() *nftFilter { return &nftFilter{blocked: map[netip.Addr]bool{}} }

// pruneFilter deletes the table a previous keepvip may have left.
func pruneFilter() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	t, err := c.ListTableOfFamily(FilterTable, nftables.TableFamilyINet)
	if err != nil || t == nil {
		return nil // no table, or no nftables: nothing of ours to remove
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing stale nftables table %s: %w", FilterTable, err)
	}
	return nil
}

// adopt takes over the table a keepvip that handed over to this one left
// (Manager.Leave), instead of pruning it: its VIPs stay filtered without
// a moment's gap until this keepvip's instances block them again. settle
// then removes what they no longer block.
func (f *nftFilter) adopt() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	t, err := c.ListTableOfFamily(FilterTable, nftables.TableFamilyINet)
	if err != nil || t == nil {
		return nil // none left
	}
	s4, err4 := c.GetSetByName(t, "noaccept4")
	s6, err6 := c.GetSetByName(t, "noaccept6")
	if err4 != nil || err6 != nil {
		// Not the table this keepvip makes: start afresh.
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("removing the nftables table %s left before: %w", FilterTable, err)
		}
		return nil
	}
	f.table, f.set4, f.set6, f.adopted = t, s4, s6, true
	return nil
}

// settle removes, from an adopted table, the addresses this keepvip does
// not block, and the table if it blocks none. Once: after the first Sync.
func (f *nftFilter) settle() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.adopted {
		return nil
	}
	f.adopted = false
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if len(f.blocked) == 0 {
		c.DelTable(f.table)
		f.table = nil
	} else {
		for _, set := range []*nftables.Set{f.set4, f.set6} {
			elems, err := c.GetSetElements(set)
			if err != nil {
				return fmt.Errorf("reading the non-accept set %s: %w", set.Name, err)
			}
			var stale []nftables.SetElement
			for _, e := range elems {
				if a, ok := netip.AddrFromSlice(e.Key); ok && !f.blocked[a] {
					stale = append(stale, nftables.SetElement{Key: e.Key})
				}
			}
			if len(stale) > 0 {
				if err := c.SetDeleteElements(set, stale); err != nil {
					return fmt.Errorf("removing addresses from the non-accept set %s: %w", set.Name, err)
				}
			}
		}
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing what the keepvip before this one blocked: %w", err)
	}
	return nil
}

// Block makes the host drop IP packets addressed to a.
func (f *nftFilter) Block(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked[a] {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if f.table == nil {
		f.create(c)
	}
	set := f.set4
	if !a.Is4() {
		set = f.set6
	}
	if err := c.SetAddElements(set, []nftables.SetElement{{Key: a.AsSlice()}}); err != nil {
		return fmt.Errorf("adding %s to the non-accept set: %w", a, err)
	}
	if err := c.Flush(); err != nil {
		if f.table != nil && len(f.blocked) == 0 {
			f.table = nil // the table was not created; try again next time
		}
		return fmt.Errorf("blocking packets to %s (accept mode off): %w", a, err)
	}
	f.blocked[a] = true
	return nil
}

// Unblock lets packets to a in again; the table goes when it is empty.
func (f *nftFilter) Unblock(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.blocked[a] {
		return nil
	}
	delete(f.blocked, a)
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if len(f.blocked) == 0 {
		c.DelTable(f.table)
		f.table = nil
	} else {
		set := f.set4
		if !a.Is4() {
			set = f.set6
		}
		if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: a.AsSlice()}}); err != nil {
			return fmt.Errorf("removing %s from the non-accept set: %w", a, err)
		}
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unblocking packets to %s: %w", a, err)
	}
	return nil
}

// Close removes the table.
func (f *nftFilter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.table == nil {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(f.table)
	f.table = nil
	clear(f.blocked)
	return c.Flush()
}

// create queues the table, its two sets and the input chain:
//
//	table inet keepvip {
//	  set noaccept4 { type ipv4_addr }
//	  set noaccept6 { type ipv6_addr }
//	  chain input {
//	    type filter hook input priority -10; policy accept;
//	    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//	    ip daddr @noaccept4 drop
//	    ip6 daddr @noaccept6 drop
//	  }
//	}
func (f *nftFilter) create(c *nftables.Conn) {
	f.table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: FilterTable})
	f.set4 = &nftables.Set{Table: f.table, Name: "noaccept4", KeyType: nftables.TypeIPAddr}
	f.set6 = &nftables.Set{Table: f.table, Name: "noaccept6", KeyType: nftables.TypeIP6Addr}
	_ = c.AddSet(f.set4, nil) // errors are reported by Flush
	_ = c.AddSet(f.set6, nil)
	prio := nftables.ChainPriority(-10)
	policy := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name: "input", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &policy,
	})
	for _, icmpType := range []byte{135, 136} {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{icmpType}},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	for _, r := range []struct {
		proto       byte
		offset, len uint32
		set         *nftables.Set
	}{
		{unix.NFPROTO_IPV4, 16, 4, f.set4},
		{unix.NFPROTO_IPV6, 24, 16, f.set6},
	} {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: r.offset, Len: r.len},
			&expr.Lookup{SourceRegister: 1, SetName: r.set.Name, SetID: r.set.ID},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
}
