package deploy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/cli"
)

// flattenYAML reads the block-style YAML of kubernetes.yaml into a map from
// dotted paths to scalars: documents and list items by index, so
// "0.spec.template.spec.containers.0.env.1.value" -> "5s". It knows mappings,
// lists of "- " items indented under their key, plain and quoted scalars and
// comments; anything else (flow style, anchors, multi-line scalars) is an
// error, which keeps the file simple enough for this test to be right about.
func flattenYAML(text string) (map[string]string, error) {
	out := map[string]string{}
	type frame struct {
		indent int
		path   string
	}
	doc := 0
	stack := []frame{{-1, "0"}}
	items := map[string]int{} // list path -> items so far
	for n, raw := range strings.Split(text, "\n") {
		line := raw
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		line = strings.TrimRight(line, " ")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line == "---" {
			doc++
			stack = []frame{{-1, strconv.Itoa(doc)}}
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		content := line[indent:]
		if strings.ContainsAny(content, "{}[]&*|>\t") {
			return nil, fmt.Errorf("line %d: %q: flow style, anchors and block scalars are not understood here", n+1, raw)
		}
		for stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		parent := stack[len(stack)-1].path
		if rest, ok := strings.CutPrefix(content, "- "); ok {
			item := parent + "." + strconv.Itoa(items[parent])
			items[parent]++
			stack = append(stack, frame{indent, item})
			parent, indent, content = item, indent+2, rest
			if !strings.Contains(content, ": ") && !strings.HasSuffix(content, ":") {
				out[item] = unquote(content)
				continue
			}
		}
		key, value, ok := strings.Cut(content, ":")
		if !ok || strings.Contains(key, " ") {
			return nil, fmt.Errorf("line %d: %q: want key: value", n+1, raw)
		}
		path := parent + "." + key
		if value = strings.TrimSpace(value); value == "" {
			stack = append(stack, frame{indent, path})
			continue
		}
		if _, dup := out[path]; dup {
			return nil, fmt.Errorf("line %d: %s given twice", n+1, path)
		}
		out[path] = unquote(value)
	}
	return out, nil
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

// pod is what the tests read from the Deployment in kubernetes.yaml.
type pod struct {
	y         map[string]string
	spec      string            // path of the pod spec
	container string            // path of the hello container
	env       map[string]string // the container's env
	envOrder  []string
}

func readPod(t *testing.T) pod {
	t.Helper()
	y, err := flattenYAML(readFile(t, "kubernetes.yaml"))
	if err != nil {
		t.Fatalf("kubernetes.yaml: %v", err)
	}
	p := pod{y: y, env: map[string]string{}}
	for doc := 0; ; doc++ {
		kind, ok := y[strconv.Itoa(doc)+".kind"]
		if !ok {
			break
		}
		if kind == "Deployment" {
			p.spec = strconv.Itoa(doc) + ".spec.template.spec"
		}
	}
	if p.spec == "" {
		t.Fatal("kubernetes.yaml has no Deployment")
	}
	if y[p.spec+".containers.0.name"] != "hello" || y[p.spec+".containers.1.name"] != "" {
		t.Fatal("the Deployment's pod should have one container, hello")
	}
	p.container = p.spec + ".containers.0"
	for i := 0; ; i++ {
		k, ok := y[fmt.Sprintf("%s.env.%d.name", p.container, i)]
		if !ok {
			break
		}
		v, ok := y[fmt.Sprintf("%s.env.%d.value", p.container, i)]
		if !ok {
			t.Fatalf("env %s has no plain value", k)
		}
		p.env[k] = v
		p.envOrder = append(p.envOrder, k)
	}
	return p
}

func (p pod) get(t *testing.T, path string) string {
	t.Helper()
	v, ok := p.y[path]
	if !ok {
		t.Fatalf("kubernetes.yaml: no %s", path)
	}
	return v
}

func (p pod) int(t *testing.T, path string) int {
	t.Helper()
	v, err := strconv.Atoi(p.get(t, path))
	if err != nil {
		t.Fatalf("kubernetes.yaml: %s: %v", path, err)
	}
	return v
}

func (p pod) duration(t *testing.T, name string) time.Duration {
	t.Helper()
	v, ok := p.env[name]
	if !ok {
		t.Fatalf("kubernetes.yaml: the container does not set %s", name)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("kubernetes.yaml: %s=%q: %v", name, v, err)
	}
	return d
}

func seconds(n int) time.Duration { return time.Duration(n) * time.Second }

// The pod's numbers agree with each other and with the image: the grace
// period covers the longest graceful stop, the readiness probe notices a stop
// within the drain delay, the probes ask the admin listener the image opens,
// and there is no preStop hook.
func TestKubernetesNumbers(t *testing.T) {
	p := readPod(t)
	drain, stop := p.duration(t, "BROOD_DRAIN_DELAY"), p.duration(t, "BROOD_STOP_TIMEOUT")
	grace := seconds(p.int(t, p.spec+".terminationGracePeriodSeconds"))
	if need := cli.StopBudget(drain, stop); grace < need {
		t.Errorf("terminationGracePeriodSeconds %v < drain delay %v + 2 x stop timeout %v + %v = %v", grace, drain, stop, cli.StopMargin, need)
	}
	if drain <= 0 {
		t.Error("BROOD_DRAIN_DELAY is 0: load balancers would still send requests to a pod that stopped serving")
	}
	ready := p.container + ".readinessProbe"
	if notice := seconds(p.int(t, ready+".periodSeconds") * p.int(t, ready+".failureThreshold")); notice > drain {
		t.Errorf("the readiness probe notices a stop only after %v, later than the drain delay %v", notice, drain)
	}

	d := parseDockerfile(t, readFile(t, "Dockerfile"))
	ports := map[string]string{}
	for i := 0; ; i++ {
		name, ok := p.y[fmt.Sprintf("%s.ports.%d.name", p.container, i)]
		if !ok {
			break
		}
		ports[name] = p.get(t, fmt.Sprintf("%s.ports.%d.containerPort", p.container, i))
	}
	listen, admin := d.env["BROOD_LISTEN"], d.env["BROOD_ADMIN"]
	if v, ok := p.env["BROOD_LISTEN"]; ok {
		listen = v
	}
	if v, ok := p.env["BROOD_ADMIN"]; ok {
		admin = v
	}
	if _, port, _ := net.SplitHostPort(listen); port != ports["http"] {
		t.Errorf("containerPort http is %q but the container listens on %q", ports["http"], listen)
	}
	if _, port, _ := net.SplitHostPort(admin); port != ports["admin"] {
		t.Errorf("containerPort admin is %q but the admin listener is %q", ports["admin"], admin)
	}
	for probe, path := range map[string]string{"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"} {
		pre := p.container + "." + probe + ".httpGet"
		if got := p.get(t, pre+".path"); got != path {
			t.Errorf("%s asks %s, want %s", probe, got, path)
		}
		if got := p.get(t, pre+".port"); got != "admin" {
			t.Errorf("%s asks port %s, want admin", probe, got)
		}
	}
	for k := range p.y {
		if strings.Contains(k, ".lifecycle.preStop") {
			t.Errorf("kubernetes.yaml has a preStop hook (%s); BROOD_DRAIN_DELAY does its work", k)
		}
	}
	for path, want := range map[string]string{
		p.spec + ".securityContext.runAsNonRoot":                  "true",
		p.container + ".securityContext.readOnlyRootFilesystem":   "true",
		p.container + ".securityContext.allowPrivilegeEscalation": "false",
	} {
		if got := p.get(t, path); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
	for _, r := range []string{"requests.cpu", "requests.memory"} {
		p.get(t, p.container+".resources."+r)
	}
	if uid, gid := p.int(t, p.spec+".securityContext.runAsUser"), p.int(t, p.spec+".securityContext.runAsGroup"); uid != d.uid || gid != d.gid {
		t.Errorf("the pod runs as %d:%d, the image's USER is %d:%d", uid, gid, d.uid, d.gid)
	}
}

// podVolume is the container's only volume: where it is mounted and whether
// it is a memory emptyDir.
func podVolume(t *testing.T, p pod) (mountPath string, memory bool) {
	t.Helper()
	name := p.get(t, p.container+".volumeMounts.0.name")
	mountPath = p.get(t, p.container+".volumeMounts.0.mountPath")
	if _, more := p.y[p.container+".volumeMounts.1.name"]; more {
		t.Fatal("the container mounts more than one volume; this test emulates one")
	}
	for i := 0; ; i++ {
		v, ok := p.y[fmt.Sprintf("%s.volumes.%d.name", p.spec, i)]
		if !ok {
			t.Fatalf("no volume %s", name)
		}
		if v == name {
			pre := fmt.Sprintf("%s.volumes.%d.", p.spec, i)
			for k := range p.y {
				if strings.HasPrefix(k, pre) && k != pre+"name" && !strings.HasPrefix(k, pre+"emptyDir.") {
					t.Fatalf("volume %s is not an emptyDir (%s); this test emulates only those", name, k)
				}
			}
			return mountPath, p.y[pre+"emptyDir.medium"] == "Memory"
		}
	}
}

// podSpec is the container the kubelet would run for the pod: the image's
// tree, read-only as the pod asks, its emptyDir, its user, the image's ENV
// with the pod's env over it, the image's entrypoint (the pod gives no
// command or args). The listeners move to free loopback ports.
func podSpec(t *testing.T, p pod) (containerSpec, dockerfile) {
	t.Helper()
	for _, k := range []string{"command.0", "args.0"} {
		if _, ok := p.y[p.container+"."+k]; ok {
			t.Fatalf("the container sets %s; this test runs the image's entrypoint", k)
		}
	}
	d := parseDockerfile(t, readFile(t, "Dockerfile"))
	overrides := make([][2]string, 0, len(p.envOrder)+2)
	for _, k := range p.envOrder {
		overrides = append(overrides, [2]string{k, p.env[k]})
	}
	overrides = append(overrides, [2]string{"BROOD_LISTEN", "127.0.0.1:0"}, [2]string{"BROOD_ADMIN", "127.0.0.1:0"})
	s := containerSpec{
		Rootfs:   imageTree(t, d),
		UID:      p.int(t, p.spec+".securityContext.runAsUser"),
		GID:      p.int(t, p.spec+".securityContext.runAsGroup"),
		Env:      containerEnv(d.envOrder, d.env, overrides...),
		Args:     d.entrypoint,
		ReadOnly: p.get(t, p.container+".securityContext.readOnlyRootFilesystem") == "true",
	}
	return s, d
}

// The pod as kubernetes.yaml describes it runs: read-only root, a memory
// emptyDir on /tmp for the run dir, the pod's user and env. It serves, and
// stops with exit 0 on SIGTERM within the grace period.
func TestKubernetesPodServes(t *testing.T) {
	needRoot(t)
	p := readPod(t)
	s, _ := podSpec(t, p)
	at, memory := podVolume(t, p)
	if !memory {
		t.Fatalf("the emptyDir at %s is on disk, mode 0777 without the sticky bit: brood refuses a run dir under it", at)
	}
	s.TmpfsAt = at
	c := startContainer(t, s)
	addr := c.checkServes(s.UID)
	c.stop(seconds(p.int(t, p.spec+".terminationGracePeriodSeconds")), addr)
}

// Why the emptyDir is in memory: on disk, the kubelet makes it 0777 without
// the sticky bit, and brood refuses to put its run dir under it, naming the
// directory. (This is the check that the pod test above would fail without
// medium: Memory.)
func TestKubernetesDiskEmptyDirIsRefused(t *testing.T) {
	needRoot(t)
	p := readPod(t)
	s, _ := podSpec(t, p)
	at, _ := podVolume(t, p)
	disk := filepath.Join(t.TempDir(), "emptydir")
	if err := os.Mkdir(disk, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(disk, 0o777); err != nil { // as the kubelet's setupDir
		t.Fatal(err)
	}
	s.BindAt, s.BindFrom = at, disk
	c := startContainer(t, s)
	if code := c.wait(time.Minute); code != 1 {
		t.Fatalf("exit %d, want 1 (the master cannot start)", code)
	}
	want := fmt.Sprintf("unsafe run dir /tmp/brood-%d/hello: /tmp (owner uid 0, mode 0777) is writable by group or others and has no sticky bit", s.UID)
	if !strings.Contains(c.output(), want) {
		t.Errorf("the output does not say %q", want)
	}
}

func TestFlattenYAML(t *testing.T) {
	y, err := flattenYAML("a: 1\nb:\n  c: \"x y\" # comment\n  d:\n    - e: 2\n      f: 3\n    - g\n---\nh: 'i'\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"0.a": "1", "0.b.c": "x y", "0.b.d.0.e": "2", "0.b.d.0.f": "3", "0.b.d.1": "g", "1.h": "i"}
	if fmt.Sprint(y) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", y, want)
	}
	for _, bad := range []string{"a: {b: c}", "a: [1, 2]", "a: |\n  x", "a b: c", "a: 1\na: 2"} {
		if _, err := flattenYAML(bad); err == nil {
			t.Errorf("flattenYAML(%q) accepted it", bad)
		}
	}
}
