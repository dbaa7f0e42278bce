// Package logrotate rotates log files that several processes of a cluster append
// to, in the egg-logrotator model: one process (the agent) renames the files,
// then every process reopens its handles.
//
// # Model
//
// Every process writes its logs through a File, which holds a descriptor opened
// with O_APPEND. The agent runs one Rotator over the same paths. When its Policy
// fires (local midnight, a size limit, or RotateNow), the Rotator, for each file:
//
//  1. renames path to path.1 (shifting path.1 to path.2 and so on) or to
//     path.YYYY-MM-DD;
//  2. creates a fresh, empty path with the old file's mode, so that readers
//     such as tail -F see it at once;
//  3. deletes the oldest rotated files beyond Policy.Keep;
//
// and then calls Options.OnRotate. The caller broadcasts "reopen" to every
// process over its own transport and reopens its own Files; each process that
// receives it calls File.Reopen on each of its Files.
//
// # What a rotation guarantees
//
// A rename does not affect open descriptors. Until a process reopens, its writes
// keep landing, whole, at the end of the renamed file (even if a later rotation
// renames it again, to path.2 ...); after its Reopen they land in the fresh file.
// So a rotation loses no line and splits none: every line written with one
// File.Write is, whole, in exactly one file, and the lines of one process appear
// in write order when the files are read oldest first (path.N ... path.1, path).
// The one way to lose lines is pruning: with Keep > 0, a rotated file is deleted
// when it falls off the end, and if a process has not reopened by then (Keep
// rotations of that log before its Reopen), what it writes afterwards goes to
// the deleted file. Keep = 0 never deletes anything.
//
// # O_APPEND atomicity
//
// On Linux, write(2) to a regular file opened with O_APPEND moves to the end of
// the file and writes while holding the file's inode lock, in one step. So
// appenders in any number of processes never overwrite each other, and the
// bytes of one write(2) are contiguous in the file, never interleaved with
// another write's. This is not the PIPE_BUF (4 KiB) rule, which is about pipes
// and FIFOs: for regular files on local filesystems (ext4, xfs, btrfs, tmpfs)
// it holds for writes of any size. It does not hold on NFS, where O_APPEND is
// emulated by the client, nor on some FUSE filesystems. File.Write makes one
// write(2) per call (up to 1 GiB; a short write, as on a full disk, is
// completed by a second one, which may then land after another process's
// line), so callers get whole lines by writing one whole line per call, as the
// log/slog handlers do.
//
// # Signals and logrotate(8)
//
// The package installs no signal handler; mapping signals to actions is the
// caller's wiring. For SIGUSR1 "rotate now" compatibility the agent calls
// RotateNow. When an external logrotate(8) renames the files (its default
// "create" mode, not copytruncate), its postrotate script signals the cluster
// and the caller only broadcasts "reopen" (RotateNow there would rotate again
// whatever was written since; it does skip empty files).
package logrotate
