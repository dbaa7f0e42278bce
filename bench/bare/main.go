// Command bare is the RSS floor: a Go process that does nothing but sleep (the
// bench reads its VmRSS and then kills it).
package main

import "time"

func main() { time.Sleep(time.Hour) }
