// Command loadgen is the benchmark suite's load generator and test upstream (standard library only).
//
//	loadgen rate    open-loop HTTP/1.1 load at a constant rate; latency from the *intended* send time
//	loadgen burst   N connections, then N requests released at once; when each first response byte arrived
//	loadgen stream  one large download or upload; bytes per second
//	loadgen serve   the upstream: 1 KiB responses, large downloads, an upload sink; records when it listens
//	loadgen watch   when a Kubernetes EndpointSlice collection first has a ready endpoint
//
// Every client command prints one JSON object on stdout.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen rate|burst|stream|serve|watch [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"rate": cmdRate, "burst": cmdBurst, "stream": cmdStream, "serve": cmdServe, "watch": cmdWatch,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "loadgen: unknown command %q (want rate, burst, stream, serve or watch)\n", os.Args[1])
		os.Exit(2)
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func emit(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}

// --- a minimal HTTP/1.1 client connection ------------------------------------------------------

type conn struct {
	c net.Conn
	r *bufio.Reader
}

func dial(addr string, timeout time.Duration) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

var errProtocol = errors.New("malformed response")

// readResponse reads one whole response and returns its status, when its first byte arrived, and
// whether the server will close the connection.
func (k *conn) readResponse() (status int, firstByte time.Time, closing bool, err error) {
	if _, err = k.r.Peek(1); err != nil {
		return
	}
	firstByte = time.Now()
	line, err := k.r.ReadSlice('\n')
	if err != nil {
		return
	}
	parts := bytes.SplitN(bytes.TrimSpace(line), []byte(" "), 3)
	if len(parts) < 2 || !bytes.HasPrefix(parts[0], []byte("HTTP/1.")) {
		err = errProtocol
		return
	}
	if status, err = strconv.Atoi(string(parts[1])); err != nil {
		err = errProtocol
		return
	}
	closing = bytes.Equal(parts[0], []byte("HTTP/1.0"))
	length, chunked := int64(-1), false
	for {
		line, err = k.r.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(line) <= 2 {
			break
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			err = errProtocol
			return
		}
		value = bytes.TrimSpace(value)
		switch strings.ToLower(string(name)) {
		case "content-length":
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil {
				err = errProtocol
				return
			}
		case "transfer-encoding":
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case "connection":
			v := bytes.ToLower(value)
			closing = bytes.Contains(v, []byte("close")) || (closing && !bytes.Contains(v, []byte("keep-alive")))
		}
	}
	switch {
	case status == 204 || status == 304 || status < 200:
	case chunked:
		err = k.discardChunked()
	case length >= 0:
		_, err = k.r.Discard(int(length))
	default:
		_, err = io.Copy(io.Discard, k.r)
		closing = true
	}
	return
}

func (k *conn) discardChunked() error {
	for {
		line, err := k.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		sizeText, _, _ := bytes.Cut(bytes.TrimSpace(line), []byte(";"))
		size, err := strconv.ParseInt(string(sizeText), 16, 64)
		if err != nil {
			return errProtocol
		}
		if size == 0 {
			for { // trailers, then the empty line
				line, err = k.r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if _, err = k.r.Discard(int(size) + 2); err != nil {
			return err
		}
	}
}

func requestBytes(method, path, host string) []byte {
	return []byte(fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: wakegate-bench\r\nAccept: */*\r\n\r\n",
		method, path, host))
}

// --- statistics ----------------------------------------------------------------------------------

func percentilesMS(samples []time.Duration) map[string]float64 {
	out := map[string]float64{}
	if len(samples) == 0 {
		return out
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(samples))+0.5) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(samples) {
			i = len(samples) - 1
		}
		return float64(samples[i]) / 1e6
	}
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	out["p50"], out["p90"], out["p99"], out["p99_9"] = at(0.50), at(0.90), at(0.99), at(0.999)
	out["max"] = float64(samples[len(samples)-1]) / 1e6
	out["mean"] = float64(sum) / float64(len(samples)) / 1e6
	return out
}

type errorCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (e *errorCounts) add(err error) {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 { // drop addresses and ports, keep the cause
		msg = msg[i+2:]
	}
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[msg]++
	e.mu.Unlock()
}

func (e *errorCounts) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, v := range e.m {
		n += v
	}
	return n
}

// --- rate: open loop ---------------------------------------------------------------------------

// cmdRate sends requests at a constant total rate over c keep-alive connections, each connection on
// its own fixed schedule (rate/c per second, staggered). A request that cannot go out on time (the
// previous response is late) is sent as soon as possible, and its latency is still measured from
// the time it was *meant* to be sent, so a stalled server is charged for the whole stall
// (no coordinated omission, as in wrk2). A request whose connection was free in time is measured
// from its actual send, so the sleep's wake-up slack is not charged to the server.
func cmdRate(args []string) error {
	fs := flag.NewFlagSet("rate", flag.ExitOnError)
	addr := fs.String("addr", "", "HOST:PORT to connect to")
	host := fs.String("host", "localhost", "Host header")
	path := fs.String("path", "/", "request path")
	conns := fs.Int("c", 50, "connections")
	rate := fs.Float64("rate", 1000, "requests per second, all connections together")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", time.Second, "time sent at the same rate before measuring")
	timeout := fs.Duration("timeout", 10*time.Second, "per-request timeout")
	scrapeURL := fs.String("scrape-url", "", "GET this URL periodically during the measured time")
	scrapeInterval := fs.Duration("scrape-interval", time.Second, "time between scrape starts")
	_ = fs.Parse(args)
	if *addr == "" || *conns <= 0 || *rate <= 0 {
		return errors.New("-addr, a positive -c and a positive -rate are required")
	}
	req := requestBytes("GET", *path, *host)
	cs := make([]*conn, *conns)
	for i := range cs {
		k, err := dial(*addr, *timeout)
		if err != nil {
			return fmt.Errorf("connect %s: %w", *addr, err)
		}
		cs[i] = k
	}
	interval := time.Duration(float64(time.Second) * float64(*conns) / *rate)
	start := time.Now().Add(50 * time.Millisecond)
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	giveUp := end.Add(*timeout)

	var errs errorCounts
	var non2xx, unsent atomic.Int64
	samples := make([][]time.Duration, *conns)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			k := cs[i]
			mine := make([]time.Duration, 0, int(float64(*duration)/float64(interval))+16)
			next := start.Add(interval * time.Duration(i) / time.Duration(*conns))
			var prevDone time.Time
			for ; next.Before(end); next = next.Add(interval) {
				now := time.Now()
				if now.After(giveUp) {
					unsent.Add(int64(end.Sub(next)/interval) + 1)
					break
				}
				if wait := next.Sub(now); wait > 0 {
					time.Sleep(wait)
				}
				// The server is charged from the intended time when its previous response was
				// late (coordinated omission); when the connection was free in time, from the
				// actual send, so the timer's wake-up slack (up to ~1 ms) is not counted as latency.
				from := next
				if !prevDone.After(next) {
					from = time.Now()
				}
				if k == nil {
					var err error
					if k, err = dial(*addr, *timeout); err != nil {
						errs.add(err)
						continue
					}
				}
				_ = k.c.SetDeadline(time.Now().Add(*timeout))
				status, closing, err := roundTrip(k, req)
				done := time.Now()
				prevDone = done
				if err != nil {
					errs.add(err)
					k.c.Close()
					k = nil
					continue
				}
				if status < 200 || status > 299 {
					non2xx.Add(1)
				}
				if !next.Before(measureFrom) {
					mine = append(mine, done.Sub(from))
				}
				if closing {
					k.c.Close()
					k = nil
				}
			}
			if k != nil {
				k.c.Close()
			}
			samples[i] = mine
		}(i)
	}

	var scrapes []time.Duration
	var scrapeErrs errorCounts
	scrapeDone := make(chan struct{})
	if *scrapeURL != "" {
		go func() {
			defer close(scrapeDone)
			client := &http.Client{Timeout: *timeout}
			time.Sleep(time.Until(measureFrom))
			for t := time.Now(); t.Before(end); t = t.Add(*scrapeInterval) {
				time.Sleep(time.Until(t))
				began := time.Now()
				resp, err := client.Get(*scrapeURL)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					scrapeErrs.add(err)
					continue
				}
				scrapes = append(scrapes, time.Since(began))
			}
		}()
	} else {
		close(scrapeDone)
	}
	wg.Wait()
	<-scrapeDone

	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	out := map[string]any{
		"requests":      len(all),
		"errors":        errs.total(),
		"error_kinds":   errs.m,
		"non_2xx":       non2xx.Load(),
		"unsent":        unsent.Load(),
		"target_rate":   *rate,
		"rate":          float64(len(all)) / duration.Seconds(),
		"connections":   *conns,
		"duration_s":    duration.Seconds(),
		"latency_ms":    percentilesMS(all),
		"scrapes":       len(scrapes),
		"scrape_ms":     percentilesMS(scrapes),
		"scrape_errors": scrapeErrs.total(),
	}
	return emit(out)
}

func roundTrip(k *conn, req []byte) (status int, closing bool, err error) {
	if _, err = k.c.Write(req); err != nil {
		return
	}
	status, _, closing, err = k.readResponse()
	return
}

// --- burst: many requests released at once -----------------------------------------------------

// cmdBurst opens n connections first, then writes one request on each at the same moment and
// records when each response's first byte arrived (Unix nanoseconds, for comparison with times
// other processes on this machine record). Progress lines go to -progress-file.
func cmdBurst(args []string) error {
	fs := flag.NewFlagSet("burst", flag.ExitOnError)
	addr := fs.String("addr", "", "HOST:PORT to connect to")
	host := fs.String("host", "localhost", "Host header")
	path := fs.String("path", "/", "request path")
	n := fs.Int("n", 1, "concurrent requests")
	dialers := fs.Int("dial-concurrency", 256, "connections being opened at once")
	timeout := fs.Duration("timeout", 120*time.Second, "time for the whole burst")
	progress := fs.String("progress-file", "", "append 'connected N' and 'sent N' lines here")
	_ = fs.Parse(args)
	if *addr == "" || *n <= 0 {
		return errors.New("-addr and a positive -n are required")
	}
	note := func(format string, a ...any) {
		if *progress == "" {
			return
		}
		f, err := os.OpenFile(*progress, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, format+"\n", a...)
			f.Close()
		}
	}
	deadline := time.Now().Add(*timeout)
	req := requestBytes("GET", *path, *host)

	began := time.Now()
	cs := make([]*conn, *n)
	var errs errorCounts
	sem := make(chan struct{}, *dialers)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			k, err := dial(*addr, time.Until(deadline))
			if err != nil {
				errs.add(err)
				return
			}
			_ = k.c.SetDeadline(deadline)
			cs[i] = k
		}(i)
	}
	wg.Wait()
	connectS := time.Since(began).Seconds()
	connected := 0
	for _, k := range cs {
		if k != nil {
			connected++
		}
	}
	note("connected %d", connected)

	release := make(chan struct{})
	var written sync.WaitGroup
	firstBytes := make([]int64, len(cs))
	statuses := make([]int, len(cs))
	for i, k := range cs {
		if k == nil {
			continue
		}
		wg.Add(1)
		written.Add(1)
		go func(i int, k *conn) {
			defer wg.Done()
			defer k.c.Close()
			<-release
			_, err := k.c.Write(req)
			written.Done()
			if err != nil {
				errs.add(err)
				return
			}
			status, first, _, err := k.readResponse()
			if err != nil {
				errs.add(err)
				return
			}
			statuses[i], firstBytes[i] = status, first.UnixNano()
		}(i, k)
	}
	sentAt := time.Now()
	close(release)
	written.Wait()
	note("sent %d", connected)
	wg.Wait()

	counts := map[string]int{}
	var ok []int64
	for i, s := range statuses {
		if s == 0 {
			continue
		}
		counts[strconv.Itoa(s)]++
		if s >= 200 && s <= 299 {
			ok = append(ok, firstBytes[i])
		}
	}
	return emit(map[string]any{
		"n":                  *n,
		"connected":          connected,
		"connect_s":          connectS,
		"sent_unix_ns":       sentAt.UnixNano(),
		"ok":                 len(ok),
		"statuses":           counts,
		"errors":             errs.total(),
		"error_kinds":        errs.m,
		"first_byte_unix_ns": ok,
	})
}

// --- stream: one large transfer ----------------------------------------------------------------

type zeros struct{ left int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.left {
		p = p[:z.left]
	}
	clear(p)
	z.left -= int64(len(p))
	return len(p), nil
}

func cmdStream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	addr := fs.String("addr", "", "HOST:PORT to connect to")
	host := fs.String("host", "localhost", "Host header")
	mode := fs.String("mode", "download", "download or upload")
	size := fs.Int64("bytes", 1<<30, "bytes to transfer")
	timeout := fs.Duration("timeout", 300*time.Second, "time for the transfer")
	_ = fs.Parse(args)
	if *addr == "" || *size <= 0 {
		return errors.New("-addr and a positive -bytes are required")
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{
		DisableCompression: true, WriteBufferSize: 256 << 10, ReadBufferSize: 256 << 10,
	}}
	var req *http.Request
	var err error
	switch *mode {
	case "download":
		req, err = http.NewRequest("GET", fmt.Sprintf("http://%s/download?bytes=%d", *addr, *size), nil)
	case "upload":
		req, err = http.NewRequest("POST", fmt.Sprintf("http://%s/upload", *addr), &zeros{left: *size})
		if req != nil {
			req.ContentLength = *size
		}
	default:
		return fmt.Errorf("-mode: want download or upload, got %q", *mode)
	}
	if err != nil {
		return err
	}
	req.Host = *host
	began := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	got, err := io.CopyBuffer(io.Discard, resp.Body, buf)
	resp.Body.Close()
	elapsed := time.Since(began).Seconds()
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if *mode == "download" && got != *size {
		return fmt.Errorf("downloaded %d bytes, want %d", got, *size)
	}
	return emit(map[string]any{
		"mode": *mode, "bytes": *size, "seconds": elapsed, "bytes_per_s": float64(*size) / elapsed,
	})
}

// --- serve: the upstream -----------------------------------------------------------------------

// cmdServe is the upstream for the wake, herd and streaming scenarios. It waits (-delay, then until
// -wait-file exists), listens, and only then appends the Unix time in nanoseconds to -ready-file:
// from that moment on the kernel accepts connections for it.
func cmdServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "", "HOST:PORT (default 127.0.0.1:$PORT)")
	delay := fs.Duration("delay", 0, "time to wait before listening")
	waitFile := fs.String("wait-file", "", "listen only once this file exists")
	waitTimeout := fs.Duration("wait-timeout", 300*time.Second, "give up waiting for -wait-file")
	readyFile := fs.String("ready-file", "", "append the Unix ns time of listening here")
	bodySize := fs.Int("body-size", 1024, "bytes of the / response")
	_ = fs.Parse(args)
	if *listen == "" {
		port := os.Getenv("PORT")
		if port == "" {
			return errors.New("-listen not given and PORT not set")
		}
		*listen = "127.0.0.1:" + port
	}
	time.Sleep(*delay)
	if *waitFile != "" {
		giveUp := time.Now().Add(*waitTimeout)
		for {
			if _, err := os.Stat(*waitFile); err == nil {
				break
			}
			if time.Now().After(giveUp) {
				return fmt.Errorf("%s did not appear within %s", *waitFile, *waitTimeout)
			}
			time.Sleep(time.Millisecond)
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *readyFile != "" {
		f, err := os.OpenFile(*readyFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "%d\n", time.Now().UnixNano())
		f.Close()
	}
	body := bytes.Repeat([]byte("x"), *bodySize)
	chunk := make([]byte, 256<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bytes=N required", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			part := chunk
			if int64(len(part)) > n {
				part = part[:n]
			}
			if _, err := w.Write(part); err != nil {
				return
			}
			n -= int64(len(part))
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 256<<10)
		n, err := io.CopyBuffer(io.Discard, r.Body, buf)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = fmt.Fprintf(w, "%d\n", n)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10}
	return srv.Serve(ln)
}

// --- watch: when an EndpointSlice turns ready ----------------------------------------------------

type sliceList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []endpointSlice `json:"items"`
}

type endpointSlice struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Endpoints []struct {
		Conditions struct {
			Ready *bool `json:"ready"`
		} `json:"conditions"`
	} `json:"endpoints"`
}

func (s *endpointSlice) ready() bool {
	for _, ep := range s.Endpoints {
		if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
			return true
		}
	}
	return false
}

// cmdWatch lists an EndpointSlice collection (none may be ready yet), watches it, and prints the
// Unix-ns time at which an event with a ready endpoint arrived. A process of its own, so the
// arrival is stamped as promptly as the gateway's own informer receives the same event.
func cmdWatch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	url := fs.String("url", "", "https://HOST:PORT/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices")
	caFile := fs.String("ca", "", "cluster CA (PEM)")
	certFile := fs.String("cert", "", "client certificate (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	timeout := fs.Duration("timeout", 180*time.Second, "give up after")
	progress := fs.String("progress-file", "", "append 'watching' here once the watch is open")
	_ = fs.Parse(args)
	if *url == "" || *caFile == "" || *certFile == "" || *keyFile == "" {
		return errors.New("-url, -ca, -cert and -key are required")
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificate found", *caFile)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}
	resp, err := client.Get(*url)
	if err != nil {
		return err
	}
	var list sliceList
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("list: status %d", resp.StatusCode)
	}
	for i := range list.Items {
		if list.Items[i].ready() {
			return errors.New("an endpoint is ready already")
		}
	}
	resp, err = client.Get(fmt.Sprintf("%s?watch=1&resourceVersion=%s&timeoutSeconds=%d", *url,
		list.Metadata.ResourceVersion, int(timeout.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("watch: status %d", resp.StatusCode)
	}
	if *progress != "" {
		if err := os.WriteFile(*progress, []byte("watching\n"), 0o644); err != nil {
			return err
		}
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var event struct {
			Type   string        `json:"type"`
			Object endpointSlice `json:"object"`
		}
		if err := dec.Decode(&event); err != nil {
			return fmt.Errorf("watch ended before an endpoint was ready: %w", err)
		}
		at := time.Now()
		if (event.Type == "ADDED" || event.Type == "MODIFIED") && event.Object.ready() {
			return emit(map[string]any{"ready_unix_ns": at.UnixNano()})
		}
	}
}
