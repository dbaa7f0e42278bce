package upgrade

// Build is a stand-in until build.go lands (being written in parallel).
type Build struct {
	Module    string `json:"module"`
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go"`
	Time      string `json:"time"`
}

// CurrentBuild is a stand-in until build.go lands.
func CurrentBuild() Build { return Build{Version: "stub"} }

// String is a stand-in until build.go lands.
func (b Build) String() string { return b.Version }
