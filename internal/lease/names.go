package lease

import (
	"strconv"
	"strings"
	"time"
)

// BucketName is the KV bucket of one purpose ("leases", "ticks") for the
// cluster named cluster: "brood_<cluster>_<purpose>". Bucket names allow only
// letters, digits, '_' and '-'; every other byte, and '-' itself, is written
// as '-' and two hex digits, so distinct names give distinct buckets
// ("my app" → "brood_my-20app_leases").
func BucketName(cluster, purpose string) string {
	return "brood_" + escape(cluster, '-') + "_" + escape(purpose, '-')
}

// Key is name as a KV key of one token: letters, digits, '_' and '-' are
// kept, every other byte (dots and '=' included) is written as '=' and two hex
// digits, and the empty name is "=". Distinct names give distinct keys.
func Key(name string) string {
	if name == "" {
		return "="
	}
	return escape(name, '=')
}

// TickKey is the key that claims one tick of a task: Key(task) + "." + the
// tick's Unix time in nanoseconds.
func TickKey(task string, tick time.Time) string {
	return Key(task) + "." + strconv.FormatInt(tick.UnixNano(), 10)
}

// escape keeps [A-Za-z0-9_] (and '-' unless it is the escape byte) and writes
// every other byte as esc followed by two upper-case hex digits.
func escape(s string, esc byte) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-' && esc != '-':
			b.WriteByte(c)
		default:
			b.WriteByte(esc)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}
