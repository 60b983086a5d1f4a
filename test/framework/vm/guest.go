package vm

import "os"

const (
	// EnvInVM is "1" in the environment of every command Run starts in the
	// guest.
	EnvInVM = "KEEPVIP_IN_VM"
	// EnvPrivileged is also "1" there: the guest is root and has every
	// module, so privileged tests must run rather than skip.
	EnvPrivileged = "KEEPVIP_PRIVILEGED"
)

// InGuest reports whether the process runs inside a machine started by Run.
// Tests meant only for the guest skip when it is false; test/vm runs them
// in the machine.
func InGuest() bool {
	return os.Getenv(EnvInVM) == "1"
}
