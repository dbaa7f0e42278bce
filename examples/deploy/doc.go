// Package deploy holds no code: it is the deployment examples of brood, for
// the hello example (examples/hello), and the tests that keep them honest.
//
//	Dockerfile       a static binary on scratch, brood as pid 1, not root
//	kubernetes.yaml  Deployment and Service: probes on the admin listener,
//	                 drain delay instead of a preStop sleep, read-only root
//	hello.service    what `hello unit --executable /usr/local/bin/hello
//	                 --listen fd://http --admin 127.0.0.1:9090 --user hello` prints
//	hello.socket     the socket unit it takes its listener from
//
// The tests run the image's tree chrooted as the Dockerfile and the pod spec
// describe it (as root; they skip otherwise), check the timeouts against each
// other, and verify the units with systemd-analyze.
package deploy
