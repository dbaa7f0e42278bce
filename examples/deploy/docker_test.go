package deploy

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/cli"
)

// The image runs brood as pid 1 and not as root, with the settings the README
// and kubernetes.yaml rely on: the cluster on port 7001 and the admin listener
// on port 9090, both on every interface.
func TestDockerfileSettings(t *testing.T) {
	d := parseDockerfile(t, readFile(t, "Dockerfile"))
	if d.finalImage != "scratch" {
		t.Errorf("the image is FROM %s, want scratch", d.finalImage)
	}
	if len(d.unknown) > 0 {
		t.Errorf("the last stage has instructions this test does not emulate: %q", d.unknown)
	}
	if d.uid <= 0 || d.gid <= 0 {
		t.Errorf("USER %d:%d: want a numeric uid:gid other than root", d.uid, d.gid)
	}
	if len(d.entrypoint) < 2 || d.entrypoint[0] != "/hello" || d.entrypoint[1] != "run" {
		t.Errorf("ENTRYPOINT %q: want the binary itself, /hello run (no shell, no init: brood is pid 1)", d.entrypoint)
	}
	if _, port, err := net.SplitHostPort(d.env["BROOD_LISTEN"]); err != nil || port != "7001" {
		t.Errorf("ENV BROOD_LISTEN=%q: want port 7001 (%v)", d.env["BROOD_LISTEN"], err)
	}
	if got := d.env["BROOD_ADMIN"]; got != ":9090" {
		t.Errorf("ENV BROOD_ADMIN=%q: want :9090, reachable by probes from outside the container", got)
	}
	text := readFile(t, "Dockerfile")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-ldflags='-s -w'"} {
		if !strings.Contains(text, want) {
			t.Errorf("the build does not use %s", want)
		}
	}
}

// The image's tree, laid out as the Dockerfile lays it out, runs chrooted as
// the Dockerfile's USER with its ENV and ENTRYPOINT: as FROM scratch, nothing
// else is there. The cluster serves HTTP, the admin listener answers /readyz,
// the run dir lands in the image's /tmp, and SIGTERM stops it with exit 0.
// The listeners move to free loopback ports (docker run -e BROOD_LISTEN=...,
// BROOD_ADMIN=...), since the container shares the host's network here.
func TestDockerImageServes(t *testing.T) {
	needRoot(t)
	d := parseDockerfile(t, readFile(t, "Dockerfile"))
	rootfs := imageTree(t, d)
	env := containerEnv(d.envOrder, d.env, [2]string{"BROOD_LISTEN", "127.0.0.1:0"}, [2]string{"BROOD_ADMIN", "127.0.0.1:0"})
	c := startContainer(t, containerSpec{Rootfs: rootfs, UID: d.uid, GID: d.gid, Env: env, Args: d.entrypoint})
	addr := c.checkServes(d.uid)
	c.stop(cli.StopBudget(0, 0)+10*time.Second, addr)
}
