// Package lvs will program Linux IPVS virtual and real servers from a
// desired state, changing only what differs and never touching services
// keepvip does not own. It is built by issue #3; nothing here yet.
package lvs
