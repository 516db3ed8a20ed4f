// wsload: the WebSocket load generator of pronghorn's benchmark (bench/run.py, rows 8a and 8b).
//
//	wsload -url ws://127.0.0.1:8000/ws -conns 64 -size 64 -warmup 1 -seconds 2
//	wsload -url ws://127.0.0.1:8000/ws -conns 1 -size 1048576 -warmup 1 -seconds 2
//
// Each connection sends one message, waits for its echo, checks it and sends the next (closed
// loop), for -warmup seconds and then -seconds more, which are measured. It prints one JSON
// object on stdout: round trips completed in the measured window and per second, the bytes
// echoed per second, round-trip latency percentiles and the errors by kind.
//
// Why not a Python client: at tens of thousands of messages per second on one core a Python
// client is the bottleneck, not the server. Go's runtime on one core (the harness pins this
// process to CPU 1, and Go sizes GOMAXPROCS from the affinity mask) keeps up.
//
// What it checks: every echo must come back as one message of the type sent (binary, or text
// with -text) and with exactly the bytes sent. Each message carries its connection number and
// sequence number at both ends, so a server that drops, reorders, replays, truncates or
// corrupts messages counts errors, not round trips. A reply that takes longer than -timeout
// is an error too. No compression is offered (permessage-deflate off), so servers are compared
// on framing and not on zlib; a server that answered with an extension anyway would be an error.
// Every message is sent as one frame (the write buffer is sized to hold it).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	phaseWarmup = iota
	phaseMeasure
	phaseStop
)

type errorCounts struct {
	Handshake int64 `json:"handshake"` // dial failed or the server did not answer 101
	Write     int64 `json:"write"`     // sending failed
	Read      int64 `json:"read"`      // reading failed, or the server closed the connection
	Timeout   int64 `json:"timeout"`   // no (complete) echo within -timeout
	Mismatch  int64 `json:"mismatch"`  // an echo with other bytes, length or type than sent
}

func (e *errorCounts) total() int64 {
	return e.Handshake + e.Write + e.Read + e.Timeout + e.Mismatch
}

type result struct {
	Mode       string         `json:"mode"`
	URL        string         `json:"url"`
	Conns      int            `json:"conns"`
	Size       int            `json:"size"`
	Text       bool           `json:"text"`
	Warmup     float64        `json:"warmup_s"`
	Seconds    float64        `json:"seconds"` // the measured window, as timed
	RoundTrips int64          `json:"round_trips"`
	Rate       float64        `json:"round_trips_per_s"`
	BytesPerS  float64        `json:"bytes_per_s"` // message bytes echoed per second, one way
	LatencyUs  map[string]int `json:"latency_us"`  // round trips completed in the window
	Errors     errorCounts    `json:"errors"`
	ErrorTotal int64          `json:"error_total"`
	FirstError string         `json:"first_error,omitempty"`
	Closes     map[string]int `json:"closes"` // how each connection's closing handshake went
	Extensions []string       `json:"extensions,omitempty"`
	Runtime    map[string]any `json:"runtime"`
}

type worker struct {
	id        uint32
	completed atomic.Int64 // round trips in the measured window
	latencies []uint32     // microseconds, measured window only
	close     string
}

type run struct {
	url     string
	size    int
	text    bool
	timeout time.Duration
	dialer  websocket.Dialer
	phase   atomic.Int32
	mu      sync.Mutex
	errs    errorCounts
	first   string
	exts    map[string]bool
}

func (r *run) fail(counter *int64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*counter++
	if r.first == "" {
		r.first = err.Error()
	}
}

func (r *run) dial() (*websocket.Conn, error) {
	c, resp, err := r.dialer.Dial(r.url, http.Header{})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("handshake: HTTP %d: %w", resp.StatusCode, err)
		} else {
			err = fmt.Errorf("dial: %w", err)
		}
		r.fail(&r.errs.Handshake, err)
		return nil, err
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		r.mu.Lock()
		r.exts[ext] = true
		r.mu.Unlock()
		c.Close()
		err = fmt.Errorf("handshake: the server agreed to an extension not offered: %q", ext)
		r.fail(&r.errs.Mismatch, err)
		return nil, err
	}
	// the largest message expected is our own echo: anything longer is a mismatch
	c.SetReadLimit(int64(r.size) + 1)
	return c, nil
}

// fill writes the message's identity (connection, sequence) in hex digits at both ends of msg
// (ASCII, so valid as text too); the middle is a fixed printable pattern laid down once.
func fill(msg []byte, id uint32, seq uint64) {
	var tag [12]byte
	binary.BigEndian.PutUint32(tag[0:4], id)
	binary.BigEndian.PutUint64(tag[4:12], seq)
	put := func(dst []byte) {
		for i := range dst {
			dst[i] = "0123456789abcdef"[tag[i/2%12]>>(4*(1-uint(i%2)))&0xf]
		}
	}
	n := len(msg)
	if n >= 48 {
		put(msg[:24])
		put(msg[n-24:])
	} else {
		put(msg)
	}
}

func pattern(size int) []byte {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, size)
	for i := range b {
		b[i] = alphabet[i%len(alphabet)]
	}
	return b
}

// readMessage reads one whole message into buf (len(buf) > the expected size, so an echo that
// is too long shows as n > size); returns its type and length.
func readMessage(c *websocket.Conn, buf []byte) (int, int, error) {
	mt, rd, err := c.NextReader()
	if err != nil {
		return 0, 0, err
	}
	n := 0
	for n < len(buf) {
		k, err := rd.Read(buf[n:])
		n += k
		if err == io.EOF {
			return mt, n, nil
		}
		if err != nil {
			return mt, n, err
		}
	}
	return mt, n, nil
}

func (r *run) loop(w *worker, wg *sync.WaitGroup) {
	defer wg.Done()
	msg := pattern(r.size)
	buf := make([]byte, r.size+1)
	msgType := websocket.BinaryMessage
	if r.text {
		msgType = websocket.TextMessage
	}
	var seq uint64
	var c *websocket.Conn
	for r.phase.Load() != phaseStop {
		if c == nil {
			var err error
			if c, err = r.dial(); err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
		}
		seq++
		fill(msg, w.id, seq)
		t0 := time.Now()
		c.SetWriteDeadline(t0.Add(r.timeout))
		if err := c.WriteMessage(msgType, msg); err != nil {
			r.fail(&r.errs.Write, fmt.Errorf("write: %w", err))
			c.Close()
			c = nil
			continue
		}
		c.SetReadDeadline(t0.Add(r.timeout))
		mt, n, err := readMessage(c, buf)
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				r.fail(&r.errs.Timeout, fmt.Errorf("no echo within %v: %w", r.timeout, err))
			} else {
				r.fail(&r.errs.Read, fmt.Errorf("read: %w", err))
			}
			c.Close()
			c = nil
			continue
		}
		if mt != msgType || n != r.size || !bytes.Equal(buf[:n], msg) {
			r.fail(&r.errs.Mismatch, fmt.Errorf(
				"echo differs: type %d length %d, sent type %d length %d", mt, n, msgType, r.size))
			c.Close()
			c = nil
			continue
		}
		if r.phase.Load() == phaseMeasure {
			w.completed.Add(1)
			w.latencies = append(w.latencies, uint32(time.Since(t0).Microseconds()))
		}
	}
	if c != nil {
		w.close = closeHandshake(c, r.timeout)
	}
}

// closeHandshake sends a close frame (1000) and waits (at most 2 s) for the server's; how it
// went. Reported, not counted as an error: the figures are about echoing.
func closeHandshake(c *websocket.Conn, timeout time.Duration) string {
	defer c.Close()
	deadline := time.Now().Add(min(timeout, 2*time.Second))
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := c.WriteControl(websocket.CloseMessage, msg, deadline); err != nil {
		return "write failed"
	}
	c.SetReadDeadline(deadline)
	for {
		if _, _, err := c.NextReader(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return fmt.Sprintf("close %d", ce.Code)
			}
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				return "no close frame (timeout)"
			}
			return "no close frame (connection closed)"
		}
	}
}

func percentile(sorted []uint32, p float64) int {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)-1))
	return int(sorted[i])
}

func main() {
	url := flag.String("url", "ws://127.0.0.1:8000/ws", "the echo endpoint")
	conns := flag.Int("conns", 64, "connections, each with one message in flight")
	size := flag.Int("size", 64, "message size in bytes")
	text := flag.Bool("text", false, "send text messages (ASCII) instead of binary")
	warmup := flag.Float64("warmup", 1, "seconds of load before the measurement")
	seconds := flag.Float64("seconds", 2, "seconds measured")
	timeout := flag.Duration("timeout", 10*time.Second, "longest wait for an echo")
	flag.Parse()
	if *size < 1 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "wsload: -size and -conns must be positive")
		os.Exit(2)
	}

	bufSize := 4096
	if *size+16 > bufSize {
		bufSize = *size + 16 // one frame per message (gorilla fragments what does not fit)
	}
	r := &run{
		url: *url, size: *size, text: *text, timeout: *timeout, exts: map[string]bool{},
		dialer: websocket.Dialer{
			HandshakeTimeout:  *timeout,
			ReadBufferSize:    min(bufSize, 65536),
			WriteBufferSize:   bufSize,
			EnableCompression: false, // offer no permessage-deflate
		},
	}
	workers := make([]*worker, *conns)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &worker{id: uint32(i + 1)}
		wg.Add(1)
		go r.loop(workers[i], &wg)
	}
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	r.phase.Store(phaseMeasure)
	t0 := time.Now()
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	r.phase.Store(phaseStop)
	elapsed := time.Since(t0).Seconds()
	wg.Wait()

	var total int64
	var lat []uint32
	closes := map[string]int{}
	for _, w := range workers {
		total += w.completed.Load()
		lat = append(lat, w.latencies...)
		if w.close != "" {
			closes[w.close]++
		} else {
			closes["not connected at the end"]++
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	mode := "echo"
	if *size >= 65536 {
		mode = "big"
	}
	res := result{
		Mode: mode, URL: *url, Conns: *conns, Size: *size, Text: *text,
		Warmup: *warmup, Seconds: elapsed, RoundTrips: total,
		Rate:      float64(total) / elapsed,
		BytesPerS: float64(total) * float64(*size) / elapsed,
		LatencyUs: map[string]int{
			"50": percentile(lat, 50), "99": percentile(lat, 99), "99.9": percentile(lat, 99.9),
			"max": percentile(lat, 100),
		},
		Errors: r.errs, ErrorTotal: r.errs.total(), FirstError: r.first, Closes: closes,
		Runtime: map[string]any{"gomaxprocs": runtime.GOMAXPROCS(0), "library": "gorilla/websocket"},
	}
	for ext := range r.exts {
		res.Extensions = append(res.Extensions, ext)
	}
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "wsload:", err)
		os.Exit(1)
	}
}
