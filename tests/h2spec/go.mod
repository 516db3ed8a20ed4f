// h2spec for tests/test_h2spec.py, built by `make h2spec` (which `make test` runs) into .tools/bin.
//
// v2.2.1 is what `go install github.com/summerwind/h2spec/cmd/h2spec@latest` resolves to. It
// has no go.mod of its own, so @latest would also take the newest golang.org/x/net and x/sys,
// which require the newest Go: the modules it imports are pinned here too, at versions that
// Debian 12's Go (1.19) builds as well as the current one.
module pronghorn-h2spec

go 1.19

require github.com/summerwind/h2spec v2.2.1+incompatible

require (
	github.com/fatih/color v1.15.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.17 // indirect
	github.com/spf13/cobra v1.7.0 // indirect
	github.com/spf13/pflag v1.0.5 // indirect
	golang.org/x/net v0.17.0 // indirect
	golang.org/x/sys v0.13.0 // indirect
	golang.org/x/text v0.13.0 // indirect
)
