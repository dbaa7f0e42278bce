package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// load is one load-generator run against one server.
type load struct {
	ReqPerSec float64
	Requests  int64
	Errors    int64 // socket errors: connect, read, write, timeout
	Non2xx    int64
}

func (l load) failed() int64 { return l.Errors + l.Non2xx }

// loadTool says which load generator to use: "wrk" or "go". With want "wrk"
// (the default) it installs wrk with apt-get when it is missing and the bench
// runs as root; otherwise it falls back to the Go load generator.
func loadTool(want string) string {
	if want == "go" {
		return "go"
	}
	if _, err := exec.LookPath("wrk"); err == nil {
		return "wrk"
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: wrk is not installed and this is not root; install it (apt-get install wrk) for the reference figures. Using the Go load generator.")
		return "go"
	}
	fmt.Fprintln(os.Stderr, "bench: wrk is not installed; installing the Debian package (apt-get install wrk) ...")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "wrk"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: apt-get %v failed (%v): %s\nUsing the Go load generator.\n", args, err, lastLines(out, 5))
			return "go"
		}
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return "go"
	}
	return "wrk"
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], []byte("\n")))
}

// runLoad loads http://addr/ with conns connections for d, keep-alive or one
// request per connection (Connection: close).
func (b *bench) runLoad(addr string, d time.Duration, closeConns bool) (load, error) {
	if b.tool == "wrk" {
		return b.wrk(addr, d, closeConns)
	}
	return goLoad(addr, b.conns, d, closeConns)
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reTotal  = regexp.MustCompile(`(\d+) requests in`)
	reSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func (b *bench) wrk(addr string, d time.Duration, closeConns bool) (load, error) {
	args := []string{"-t2", fmt.Sprintf("-c%d", b.conns), fmt.Sprintf("-d%ds", int(d.Seconds())), "--timeout", "2s"}
	if closeConns {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, "http://"+addr+"/")
	var out bytes.Buffer
	p, err := start(b.logDir, "wrk", &out, "wrk", args...)
	if err != nil {
		return load{}, err
	}
	if !p.exited(d + 30*time.Second) {
		p.kill()
		return load{}, fmt.Errorf("wrk did not finish")
	}
	p.kill()
	if p.err != nil {
		return load{}, fmt.Errorf("wrk: %v: %s %s", p.err, out.String(), p.log.tail(5))
	}
	return parseWrk(out.String())
}

func parseWrk(s string) (load, error) {
	var l load
	m := reRPS.FindStringSubmatch(s)
	if m == nil {
		return l, fmt.Errorf("no Requests/sec in wrk output: %s", s)
	}
	l.ReqPerSec, _ = strconv.ParseFloat(m[1], 64)
	if m := reTotal.FindStringSubmatch(s); m != nil {
		l.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reSock.FindStringSubmatch(s); m != nil {
		for _, v := range m[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			l.Errors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(s); m != nil {
		l.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return l, nil
}

// goLoad is the fallback load generator: conns goroutines, each with its own
// connection, one request at a time, for d.
func goLoad(addr string, conns int, d time.Duration, closeConns bool) (load, error) {
	req := "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
	if closeConns {
		req = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
	}
	var ok, errs, non2xx atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			var c net.Conn
			var br *bufio.Reader
			for time.Now().Before(deadline) {
				if c == nil {
					var err error
					if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err != nil {
						errs.Add(1)
						c = nil
						continue
					}
					br = bufio.NewReader(c)
				}
				c.SetDeadline(time.Now().Add(2 * time.Second))
				resp, err := sendReq(c, br, req)
				if err != nil {
					errs.Add(1)
					c.Close()
					c = nil
					continue
				}
				if resp/100 == 2 {
					ok.Add(1)
				} else {
					non2xx.Add(1)
				}
				if closeConns {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		})
	}
	wg.Wait()
	total := ok.Load() + non2xx.Load()
	return load{ReqPerSec: float64(total) / d.Seconds(), Requests: total, Errors: errs.Load(), Non2xx: non2xx.Load()}, nil
}

func sendReq(c net.Conn, br *bufio.Reader, req string) (int, error) {
	if _, err := io.WriteString(c, req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}
