package deploy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// TestMain lets the test binary play the container runtime (see
// runtimeMain) when the environment asks; otherwise it runs the tests and
// checks that no goroutine leaked.
func TestMain(m *testing.M) {
	if os.Getenv(envRuntime) != "" {
		runtimeMain()
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// moduleRoot is the repository root: the Dockerfile's build context.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod at the module root %s: %v", root, err)
	}
	return root
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A dockerfile is the part of the Dockerfile the tests depend on.
type dockerfile struct {
	builderImage string            // FROM of the build stage: golang:1.26-bookworm
	finalImage   string            // FROM of the last stage: scratch
	buildRuns    []string          // RUN commands of the build stage
	finalCopies  []string          // COPY lines of the last stage, as written
	uid, gid     int               // USER of the last stage
	env          map[string]string // ENV of the last stage
	envOrder     []string
	entrypoint   []string // exec form only
	unknown      []string // instructions of the last stage the emulation does not know
}

// parseDockerfile reads the instructions brood's examples use: no line
// continuations, ENV in the KEY=VALUE form, ENTRYPOINT in the exec form.
func parseDockerfile(t *testing.T, text string) dockerfile {
	t.Helper()
	d := dockerfile{env: map[string]string{}, uid: -1, gid: -1}
	stage := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			t.Fatalf("Dockerfile:%d: line continuations are not understood by this test: %q", n, line)
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch instr = strings.ToUpper(instr); {
		case instr == "FROM":
			stage++
			image := strings.Fields(rest)[0]
			if stage == 1 {
				d.builderImage = image
			}
			d.finalImage = image // and the stage's settings start afresh
			d.finalCopies, d.env, d.envOrder, d.entrypoint, d.unknown, d.uid, d.gid = nil, map[string]string{}, nil, nil, nil, -1, -1
		case stage == 1 && instr == "RUN":
			d.buildRuns = append(d.buildRuns, rest)
		case stage == 1:
			// WORKDIR, COPY of the sources: the tests build from the module root.
		case instr == "COPY":
			d.finalCopies = append(d.finalCopies, rest)
		case instr == "USER":
			u, g, ok := strings.Cut(rest, ":")
			uid, err1 := strconv.Atoi(u)
			gid, err2 := strconv.Atoi(g)
			if !ok || err1 != nil || err2 != nil {
				t.Fatalf("Dockerfile:%d: USER %q: want numeric uid:gid (scratch has no /etc/passwd)", n, rest)
			}
			d.uid, d.gid = uid, gid
		case instr == "ENV":
			for _, kv := range strings.Fields(rest) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || strings.ContainsAny(v, `"'$`) {
					t.Fatalf("Dockerfile:%d: ENV %q: this test reads only unquoted KEY=VALUE pairs", n, rest)
				}
				if _, dup := d.env[k]; !dup {
					d.envOrder = append(d.envOrder, k)
				}
				d.env[k] = v
			}
		case instr == "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil || len(d.entrypoint) == 0 {
				t.Fatalf("Dockerfile:%d: ENTRYPOINT %s: want the exec form, a JSON array (the shell form needs a shell, which scratch has not): %v", n, rest, err)
			}
		case instr == "EXPOSE" || instr == "STOPSIGNAL" || instr == "LABEL":
			// documentation, or what docker stop sends (checked below)
		default:
			d.unknown = append(d.unknown, line)
		}
	}
	return d
}

// shellWords splits a simple shell command: words separated by blanks,
// single or double quotes around parts of a word, no escapes or expansions
// (the test refuses those).
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	if strings.ContainsAny(s, "\\$`*?;|<>(){}") {
		t.Fatalf("shell command %q: too clever for this test", s)
	}
	var words []string
	var b strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in {
				words, in = append(words, b.String()), false
				b.Reset()
			}
		default:
			b.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("shell command %q: unterminated quote", s)
	}
	if in {
		words = append(words, b.String())
	}
	return words
}

var goDirective = regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`)

// The build stage's Go is at least the one go.mod asks for, so the image
// builds with the toolchain it names instead of downloading another (or
// failing without network).
func TestDockerfileBuilderGoVersion(t *testing.T) {
	d := parseDockerfile(t, readFile(t, "Dockerfile"))
	m := goDirective.FindStringSubmatch(readFile(t, filepath.Join(moduleRoot(t), "go.mod")))
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	img := regexp.MustCompile(`^golang:(\d+)\.(\d+)`).FindStringSubmatch(d.builderImage)
	if img == nil {
		t.Fatalf("the build stage is FROM %s, want golang:<major>.<minor>...", d.builderImage)
	}
	num := func(s string) int { v, _ := strconv.Atoi(s); return v }
	if num(img[1]) < num(m[1]) || num(img[1]) == num(m[1]) && num(img[2]) < num(m[2]) {
		t.Errorf("the build stage is FROM %s but go.mod says go %s.%s", d.builderImage, m[1], m[2])
	}
}
