# keepvip — see README.md. Every target installs what it needs (hack/deps.sh).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# A count, not a duration: with -fuzztime as a duration, Go 1.26's fuzz
# coordinator can report its own deadline as a failure ("context deadline
# exceeded", no crasher; golang/go#75804, fixed in Go 1.27). 50,000
# executions take 1-17 s per target here.
FUZZTIME ?= 50000x
RUNS ?= 10

# Packages whose tests run with the race detector in parallel; the lab-based
# suites run one package at a time because they measure timing.
LAB_PKGS := ./test/e2e/ ./test/framework/lab/ ./test/kube/ ./test/nodes/
# test/vm boots the VM and runs the IPVS tests there: see test-vm.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /test/e2e -e /test/framework/lab$$ -e /test/vm -e /test/kube -e /test/nodes)
FUZZ_TARGETS := ./vrrp:FuzzParseAdvertisement ./config:FuzzParse ./configmap:FuzzParse ./bfd:FuzzParse

.PHONY: all build image lab deps kubebin test vet fuzz demo bench clean

all: build

deps:
	@hack/deps.sh

build:
	@CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/keepvip ./cmd/keepvip

# keepvip's container image without Docker or a registry: an OCI image
# layout archive with the static binary, the same contents as the
# Dockerfile's. Load it with `ctr -n k8s.io images import
# bin/keepvip-image.tar` (containerd) or `podman load -i ...`.
IMAGE ?= keepvip:$(VERSION)
image: build
	@$(GO) run ./hack/image -binary bin/keepvip -ref '$(IMAGE)' -o bin/keepvip-image.tar

# The end-to-end tests run a race-enabled daemon.
bin/keepvip-race: $(shell git ls-files --cached --others --exclude-standard "*.go") go.mod go.sum
	$(GO) build -race -o $@ ./cmd/keepvip

lab:
	@$(GO) build -o bin/keepvip-lab ./hack/lab

# The Kubernetes binaries of the tests (kube-apiserver, kubectl, kubelet,
# kube-controller-manager, kube-scheduler), built in one go build from
# hack/kubebin (pinned Kubernetes) into ~/.cache/keepvip-kube: several
# minutes the first time, a hash and a few stats after.
kubebin:
	@$(GO) run ./test/framework/kubetest/cmd/kubebin >/dev/null

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Everything this machine can run. Privileged tests (network namespaces,
# keepalived interop) fail rather than skip here: KEEPVIP_PRIVILEGED=1.
test: deps vet build bin/keepvip-race lab kubebin
	KEEPVIP_PRIVILEGED=1 $(GO) test -race -count=1 -timeout 10m $(UNIT_PKGS)
	KEEPVIP_PRIVILEGED=1 KEEPVIP_BIN=$(abspath bin/keepvip-race) \
	  $(GO) test -race -count=1 -p 1 -timeout 20m $(LAB_PKGS)
	$(MAKE) --no-print-directory test-vm
	$(MAKE) --no-print-directory fuzz
	@echo 'make demo (its output in bin/demo.log; the end of it shown if it fails)'
	@KEEPVIP_BIN=$(abspath bin/keepvip) bin/keepvip-lab demo >bin/demo.log 2>&1 || \
	  { tail -n 80 bin/demo.log; echo 'make demo failed: bin/demo.log has its whole output'; exit 1; }
	@echo "make test: all passed"

# Each fuzz target for FUZZTIME (seed corpora also run in every go test).
# Minimisation is capped: Go's fuzzer otherwise spends minutes minimising
# each new YAML input before it counts further executions.
# The vip-configmap's edit-sequence property runs longer here than in the
# unit tests: PROPERTY_SEEDS sequences of PROPERTY_STEPS edits, from seed
# 1000 on (the unit tests run seeds 1-16).
PROPERTY_SEEDS ?= 100
PROPERTY_STEPS ?= 500
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200x $$pkg || exit 1; \
	done
	@echo "property TestConfigMapEditsProperty ($(PROPERTY_SEEDS) x $(PROPERTY_STEPS) edits)"
	@KEEPVIP_PROPERTY_SEEDS=$(PROPERTY_SEEDS) KEEPVIP_PROPERTY_STEPS=$(PROPERTY_STEPS) KEEPVIP_PROPERTY_FIRST_SEED=1000 \
	  $(GO) test -count=1 -run '^TestConfigMapEditsProperty$$' ./internal/kube/

demo: deps build lab
	@KEEPVIP_BIN=$(abspath bin/keepvip) bin/keepvip-lab demo

# Failover and handoff of keepvip and keepalived, same lab, same settings;
# routes following VRRP through FRR; routers dropping a failed node with
# BFD (FRR, BIRD) and without (the hold time), same runs;
# health checking of 10,000 targets on this host; IPVS programming of
# 10,000 services x 10 real servers next to ipvsadm -R, in the test VM.
bench: deps build lab
	@KEEPVIP_BIN=$(abspath bin/keepvip) bin/keepvip-lab bench -runs $(RUNS)
	@KEEPVIP_BIN=$(abspath bin/keepvip) bin/keepvip-lab bgpbench -runs $(RUNS)
	@KEEPVIP_BIN=$(abspath bin/keepvip) bin/keepvip-lab bfdbench -runs $(RUNS)
	@$(GO) build -o bin/ipvsbench ./hack/ipvsbench && bin/ipvsbench -health
	@CGO_ENABLED=0 $(GO) build -o bin/ipvsbench-static ./hack/ipvsbench
	@$(GO) run ./hack/vm -timeout 40m -cmd-timeout 35m run -- bin/ipvsbench-static
	@$(MAKE) --no-print-directory bench-kube
	@$(MAKE) --no-print-directory bench-connsync
	@$(MAKE) --no-print-directory bench-configmap
	@$(MAKE) --no-print-directory bench-fault
	@$(MAKE) --no-print-directory bench-nodes

# The fault suite (test/e2e TestFault*, the paused backups next to
# keepalived) in its long form: floods of 10,000 frames/s for 20 s, 20
# brief and 10 long pauses of the master, 10 crashes, 390 bad reloads, 20
# pauses of each length of the backup. The release binary, as deployed.
.PHONY: bench-fault
bench-fault: deps build lab
	@set -o pipefail; out=$$(KEEPVIP_PRIVILEGED=1 KEEPVIP_BIN=$(abspath bin/keepvip) KEEPVIP_FAULT_LONG=1 KEEPVIP_STALL_ROUNDS=20 \
	  $(GO) test -count=1 -p 1 -timeout 20m -run '^(TestFault|TestStalledBackup)' -v ./test/e2e/ 2>&1); rc=$$?; \
	  grep '^BENCH ' <<<"$$out"; if [ $$rc -ne 0 ]; then echo "$$out" | grep -v '^=== ' | tail -80; exit $$rc; fi

# keepvip on three real nodes (test/nodes): rolling updates (a restart, an
# image change) with the client's longest gap, TCP connections lost and
# moves of the VIP, next to keepalived's rollout as kube-keepalived-vip ran
# it; kubectl apply -k deploy/ to the VIP answering.
.PHONY: bench-nodes
bench-nodes: deps kubebin
	@set -o pipefail; out=$$(KEEPVIP_PRIVILEGED=1 $(GO) test -count=1 -timeout 15m -run '^(TestRollingUpdate|TestRollingUpdateKeepalivedReference|TestApplyToVIPAnswering)$$' -v ./test/nodes/ 2>&1); rc=$$?; \
	  grep -o 'BENCH .*' <<<"$$out"; if [ $$rc -ne 0 ]; then echo "$$out" | tail -60; exit $$rc; fi

# Parse and Resolve of a vip-configmap of 1,000 instances, 1,000 virtual
# servers and 250 VIP keys: fresh, with history, config.yaml unreadable,
# and with routing (1,000 static prefixes, an announce block each).
.PHONY: bench-configmap
bench-configmap:
	@set -o pipefail; $(GO) test -run '^$$' -bench '^BenchmarkParseResolve$$' -benchtime 20x ./internal/kube/ | \
	  awk '/^BenchmarkParseResolve\// { split($$1, a, "/"); sub(/-[0-9]+$$/, "", a[2]); printf "BENCH vip_configmap_parse_resolve_1000_%s %.1f ms\n", a[2], $$3/1e6 }'

# IPVS connection sync in the VM: 200 NAT and 200 DR connections through
# two directors, the master killed or handing off, and without sync for
# reference (test/ipvs TestConnectionSyncFailover).
.PHONY: bench-connsync
bench-connsync:
	@set -o pipefail; out=$$(KEEPVIP_PRIVILEGED=1 KEEPVIP_VM_PKGS=./test/ipvs KEEPVIP_VM_RUN='^TestConnectionSyncFailover$$' \
	  $(GO) test -count=1 -timeout 20m -run '^TestVM$$' -v ./test/vm/ 2>&1); rc=$$?; \
	  grep '^BENCH ' <<<"$$out"; if [ $$rc -ne 0 ]; then echo "$$out" | tail -60; exit $$rc; fi

# Kubernetes mode in the VM: endpoint changes and ConfigMap edits from the
# API call to the IPVS table (KUBE_ROUNDS of each), API server on the host.
KUBE_ROUNDS ?= 200
.PHONY: bench-kube
bench-kube: kubebin
	@set -o pipefail; out=$$(KEEPVIP_PRIVILEGED=1 KEEPVIP_VM_PKGS=./test/ipvs KEEPVIP_VM_RUN='^TestKubernetes$$' \
	  KEEPVIP_VM_ENV="KEEPVIP_KUBE_ROUNDS=$(KUBE_ROUNDS)" $(GO) test -count=1 -timeout 20m -run '^TestVM$$' -v ./test/vm/ 2>&1); rc=$$?; \
	  grep '^BENCH ' <<<"$$out"; if [ $$rc -ne 0 ]; then echo "$$out" | tail -60; exit $$rc; fi

clean:
	rm -rf bin

# Tests that need IPVS, which the host kernel lacks, in a qemu machine
# (test/framework/vm): Debian's kernel under TCG, cached in ~/.cache/keepvip-vm.
# Every package of KEEPVIP_VM_PKGS (default: test/vm/guest, lvs,
# healthcheck, test/ipvs where they exist) runs there in one boot, each
# guest test reported as a subtest of TestVM.
.PHONY: test-vm
test-vm: kubebin
	KEEPVIP_PRIVILEGED=1 $(GO) test -count=1 -timeout 30m -run '^TestVM$$' ./test/vm/
