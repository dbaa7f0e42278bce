package admin

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"html"
	"strings"
)

// The dashboard is written as three files and served as one page: the style
// and the script are inlined, so the page needs nothing but itself, /status
// and /events (no CDN, no fonts, works offline and behind any path prefix).
var (
	//go:embed dashboard/index.html
	pageHTML string
	//go:embed dashboard/style.css
	pageCSS string
	//go:embed dashboard/app.js
	pageJS string
)

// buildPage returns the dashboard for an application named name and the
// Content-Security-Policy that allows exactly its inline style and script.
func buildPage(name string) (page []byte, csp string) {
	if name = strings.TrimSpace(name); name == "" {
		name = "brood"
	}
	page = []byte(strings.NewReplacer(
		"{{NAME}}", html.EscapeString(name),
		"{{STYLE}}", pageCSS,
		"{{SCRIPT}}", pageJS,
	).Replace(pageHTML))
	csp = "default-src 'none'; " +
		"script-src '" + hash(pageJS) + "'; " +
		"style-src '" + hash(pageCSS) + "'; " +
		"connect-src 'self'; img-src data:; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	return page, csp
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}
