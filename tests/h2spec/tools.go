//go:build tools

// Package tools only names h2spec, so that `go mod tidy` keeps its requirements in go.mod.
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
