/* dockyard-shim-idle: the idle monitor a container's shim execve()s into.
 *
 * A shim idle a while replaces its Python interpreter (~7 MB) with this program
 * (~0.2 MB), keeping its PID: it stays the parent and child subreaper of the
 * container's init. On any activity it execve()s back into the Python shim,
 * which resumes from its state file.
 *
 *   dockyard-shim-idle [--pid PID] [--listen FD] [--park FD] [--watch FD]...
 *                      [--out FD:N --log PATH --log-max-size N --partial PREFIX] -- PROGRAM [ARG...]
 *
 * Wakes (execvp(PROGRAM, ARGS) with the current environment) when:
 *   --listen FD  a listening AF_UNIX socket has a pending connection; never
 *                accepted here: the Python shim takes the socket over and accepts it.
 *   --watch FD   a pipe / pty master / eventfd is readable, or hung up, or in error.
 *   --pid PID    PID (the container's init, our child) exited; it is left
 *                unreaped so the Python shim reads its exit status (and, in
 *                DOCKYARD_SHIM_EXITED_AT, the time in ns since the epoch when the
 *                monitor saw it gone: when it exited, to the poll). Any other
 *                child that exits (an orphan re-parented to us) is reaped silently.
 *   --out FD:N   the container's stdout (N=1) or stderr (N=2) pipe, or its pty master
 *                (1), at most two: what it writes is logged here (--log PATH, the
 *                json-file log; --log-max-size N, 0 for none; --partial PREFIX, see
 *                the log section below); it wakes at the stream's end, or for output
 *                the Python shim must log itself.
 *   --park FD    a client of this listening AF_UNIX socket (the shim's wake socket,
 *                common/shimwake.py) sends a byte. Connections are accepted (64 kept
 *                at most); one that sends nothing just waits: it sees EOF when the
 *                monitor wakes, for whatever reason.
 *
 * The listen, watch and out fds pass through the exec untouched (the caller clears
 * their close-on-exec flag); the park fd and its clients are closed. SIGINT,
 * SIGHUP, SIGTERM, SIGQUIT and SIGPIPE are ignored, and stay so across the
 * exec; SIGCHLD (read here through a signalfd) is unblocked and SIG_DFL again.
 * Argument errors (and a given fd that is not open): one line on stderr, exit 2.
 * Otherwise silent; it never exits: a failed exec is reported on stderr and
 * retried every second.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define MAX_WATCH 64
#define MAX_PARKED 64

static int park_fd = -1;
static int parked[MAX_PARKED];
static int n_parked;

static void usage_error(const char *fmt, ...)
{
	va_list ap;
	fputs("dockyard-shim-idle: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static int parse_num(const char *opt, const char *s, long min)
{
	char *end;
	long v;

	if (s == NULL)
		usage_error("%s needs a value", opt);
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > INT_MAX)
		usage_error("%s: not a valid number: '%s'", opt, s);
	return (int)v;
}

static void check_open(const char *opt, int fd)
{
	if (fd >= 0 && fcntl(fd, F_GETFD) < 0)
		usage_error("%s %d: fd is not open", opt, fd);
}

/* Reap exited children other than pid; return 1 if pid itself has exited (left unreaped). */
static int sweep(pid_t pid)
{
	for (;;) {
		siginfo_t info;
		memset(&info, 0, sizeof(info));
		if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0) {
			if (errno == EINTR)
				continue;
			return 0; /* ECHILD: no children at all */
		}
		if (info.si_pid == 0)
			return 0;
		if (pid > 0 && info.si_pid == pid)
			return 1;
		waitpid(info.si_pid, NULL, 0);
	}
}

static void drop_parked(int i)
{
	close(parked[i]);
	parked[i] = parked[--n_parked];
}

static void park_accept(void)
{
	int c = accept4(park_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (c < 0)
		return;
	if (n_parked == MAX_PARKED)
		close(c);
	else
		parked[n_parked++] = c;
}


/* --- the container's json-file log, written here while the shim sleeps --------------------
 *
 * The same entries as services/shim/jsonlog.py's LogWriter (Docker's json-file format):
 * {"log":"<text>","stream":"stdout"|"stderr","time":"<RFC 3339, ns>Z"}, one per line of
 * output (with its \n), lines of 16 KiB or more split into 16 KiB entries, every entry of
 * one read stamped with that read's time, the JSON string escaped as Python's
 * json.encoder.encode_basestring does. What this cannot write exactly as Python would (bytes
 * that are not UTF-8, a file at its --log-max-size, a write error) is kept unwritten and the
 * Python shim is woken to write it. The unterminated line of each stream is handed over in
 * the files PREFIX.1 / PREFIX.2 both ways (read at start, written at the wake).
 */
#define MAX_ENTRY 16384
#define READ_SIZE 65536
#define MAX_HELD (2 * MAX_ENTRY) /* more than the Python shim ever hands over */

struct stream {
	int fd, id;
	size_t len;
	unsigned char buf[MAX_HELD + READ_SIZE];
};

static struct stream stream_store[2]; /* in .bss: a page counts once written (see release) */
static struct stream *streams[2];
static int n_streams;
static int log_fd = -1;
static long long log_max_size;
static const char *partial_prefix;

static int utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t k;
		unsigned cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			k = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return 0;
		}
		if (i + k >= n)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* Append data[0:n] as a JSON string body to out (room for 6 * n bytes); return its length. */
static size_t json_escape(char *out, const unsigned char *data, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char *o = out;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = data[i];
		switch (c) {
		case '"': *o++ = '\\', *o++ = '"'; break;
		case '\\': *o++ = '\\', *o++ = '\\'; break;
		case '\n': *o++ = '\\', *o++ = 'n'; break;
		case '\r': *o++ = '\\', *o++ = 'r'; break;
		case '\t': *o++ = '\\', *o++ = 't'; break;
		case '\b': *o++ = '\\', *o++ = 'b'; break;
		case '\f': *o++ = '\\', *o++ = 'f'; break;
		default:
			if (c < 0x20) {
				memcpy(o, "\\u00", 4);
				o += 4;
				*o++ = hex[c >> 4], *o++ = hex[c & 15];
			} else {
				*o++ = (char)c;
			}
		}
	}
	return (size_t)(o - out);
}

/* Where the entry that starts at start ends (LogWriter.write's split, see jsonlog.py), or 0
 * when what is held from start on is not a complete entry yet. */
static size_t entry_end(const struct stream *st, size_t start)
{
	size_t rem = st->len - start, lim = rem < MAX_ENTRY ? rem : MAX_ENTRY;
	const unsigned char *nl = memchr(st->buf + start, '\n', lim);
	if (nl != NULL)
		return (size_t)(nl - st->buf) + 1;
	return rem >= MAX_ENTRY ? start + MAX_ENTRY : 0;
}

static size_t escaped_len(const unsigned char *data, size_t n)
{
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = data[i];
		len += (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') ? 2
		       : c < 0x20 ? 6 : 1;
	}
	return len;
}

/* Give the kernel back the pages of [from, from + len) that hold nothing (a burst of output
 * would otherwise leave the sleeping monitor megabytes larger). */
static void release(void *from, size_t len)
{
	uintptr_t lo = ((uintptr_t)from + 4095) & ~(uintptr_t)4095, hi = ((uintptr_t)from + len) & ~(uintptr_t)4095;
	if (hi > lo)
		madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, data, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		data += w, len -= (size_t)w;
	}
	return 0;
}

static char out_buf[8 * MAX_ENTRY] __attribute__((aligned(4096))); /* > one entry at its largest */

/* Log the complete entries held by st: 0 when done (or nothing to do), -1 when the Python
 * shim must write them (then st holds what is not written yet). */
static int log_entries(struct stream *st)
{
	char tail[96], stamp[40];
	struct timespec ts;
	struct tm tm;
	size_t start = 0, stop, end, done = 0, used = 0;
	long long total = 0;
	int tail_len, failed = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	tail_len = snprintf(tail, sizeof(tail), "\",\"stream\":\"%s\",\"time\":\"%s.%09ldZ\"}\n",
			    st->id == 2 ? "stderr" : "stdout", stamp, ts.tv_nsec);
	/* first every entry is checked (and measured): all of this read, or none, is ours to write */
	while (start < st->len && (stop = entry_end(st, start)) != 0) {
		if (!utf8_valid(st->buf + start, stop - start))
			return -1;
		total += 8 + (long long)escaped_len(st->buf + start, stop - start) + tail_len;
		start = stop;
	}
	end = start;
	if (end == 0)
		return 0;
	if (log_max_size > 0) { /* rotation is the Python shim's (LogWriter._rotate) */
		struct stat sb;
		if (fstat(log_fd, &sb) != 0 || sb.st_size + total > log_max_size)
			return -1;
	}
	for (start = 0; start < end; start = stop) {
		stop = entry_end(st, start);
		if (used + 8 + 6 * (stop - start) + (size_t)tail_len > sizeof(out_buf)) {
			if (write_all(log_fd, out_buf, used) != 0) {
				failed = 1;
				break;
			}
			done = start, used = 0;
		}
		memcpy(out_buf + used, "{\"log\":\"", 8);
		used += 8;
		used += json_escape(out_buf + used, st->buf + start, stop - start);
		memcpy(out_buf + used, tail, (size_t)tail_len);
		used += (size_t)tail_len;
	}
	if (!failed) {
		if (write_all(log_fd, out_buf, used) == 0)
			done = end;
		else
			failed = 1;
	}
	release(out_buf, sizeof(out_buf));
	memmove(st->buf, st->buf + done, st->len - done);
	st->len -= done;
	release(st->buf + st->len, sizeof(st->buf) - st->len);
	return failed ? -1 : 0;
}

/* Read what st's fd holds and log it: 0 to go on sleeping, 1 at the end of the stream (or
 * a read error: a pty's EIO once the container's side closed), -1 when the Python shim must
 * write what was read. */
static int pump(struct stream *st)
{
	ssize_t r;
	if (st->len > MAX_HELD)
		return -1;
	r = read(st->fd, st->buf + st->len, READ_SIZE);
	if (r < 0)
		return (errno == EAGAIN || errno == EINTR) ? 0 : 1;
	if (r == 0)
		return 1;
	st->len += (size_t)r;
	return log_entries(st);
}

static void partial_path(char *out, size_t size, int id)
{
	snprintf(out, size, "%s.%d", partial_prefix, id);
}

static void load_partial(struct stream *st)
{
	char path[PATH_MAX];
	int fd;
	ssize_t r;
	partial_path(path, sizeof(path), st->id);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	while ((r = read(fd, st->buf + st->len, MAX_HELD + 1 - st->len)) > 0)
		st->len += (size_t)r;
	close(fd);
}

static void save_partials(void)
{
	for (int i = 0; i < n_streams; i++) {
		struct stream *st = streams[i];
		char path[PATH_MAX], tmp[PATH_MAX + 8];
		int fd;
		partial_path(path, sizeof(path), st->id);
		if (st->len == 0) {
			unlink(path);
			continue;
		}
		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0) {
			fprintf(stderr, "dockyard-shim-idle: %s: %s\n", tmp, strerror(errno));
			continue;
		}
		for (size_t off = 0; off < st->len;) {
			ssize_t w = write(fd, st->buf + off, st->len - off);
			if (w <= 0 && errno != EINTR)
				break;
			if (w > 0)
				off += (size_t)w;
		}
		close(fd);
		rename(tmp, path);
	}
}

static pid_t init_pid;

/* The init exited (a zombie we did not reap): tell the Python shim when, as the exit time
 * it records would otherwise be that of its reap, an interpreter's start-up later. */
static void note_exit_time(void)
{
	siginfo_t info;
	struct timespec ts;
	char buf[32];

	if (init_pid <= 0)
		return;
	memset(&info, 0, sizeof(info));
	if (waitid(P_PID, init_pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != init_pid)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(buf, sizeof(buf), "%lld", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
	setenv("DOCKYARD_SHIM_EXITED_AT", buf, 1);
}

static _Noreturn void wake(char **argv)
{
	sigset_t chld;

	note_exit_time();
	save_partials();

	if (park_fd >= 0)
		close(park_fd);
	while (n_parked > 0)
		drop_parked(n_parked - 1);
	signal(SIGCHLD, SIG_DFL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_UNBLOCK, &chld, NULL);
	for (;;) {
		execvp(argv[0], argv);
		fprintf(stderr, "dockyard-shim-idle: exec %s: %s\n", argv[0], strerror(errno));
		sleep(1);
	}
}

int main(int argc, char **argv)
{
	static const int ignored[] = {SIGINT, SIGHUP, SIGTERM, SIGQUIT, SIGPIPE};
	struct pollfd fds[4 + MAX_WATCH + 2 + MAX_PARKED];
	int watch[MAX_WATCH], n_watch = 0, listen_fd = -1, sig_fd, pid_fd = -1, i;
	pid_t pid = 0;
	char **program = NULL;
	const char *log_path = NULL;
	sigset_t chld;
	int must_wake = 0;

	for (i = 1; i < argc; i++) {
		const char *opt = argv[i];
		if (strcmp(opt, "--") == 0) {
			program = &argv[i + 1];
			break;
		} else if (strcmp(opt, "--pid") == 0) {
			pid = parse_num(opt, argv[++i], 1);
		} else if (strcmp(opt, "--listen") == 0) {
			listen_fd = parse_num(opt, argv[++i], 0);
		} else if (strcmp(opt, "--park") == 0) {
			park_fd = parse_num(opt, argv[++i], 0);
		} else if (strcmp(opt, "--out") == 0) {
			const char *v = argv[++i];
			char *colon = v ? strchr(v, ':') : NULL;
			if (colon == NULL || (strcmp(colon, ":1") != 0 && strcmp(colon, ":2") != 0))
				usage_error("--out wants FD:1 or FD:2, not '%s'", v ? v : "");
			if (n_streams == 2)
				usage_error("at most two --out");
			*colon = '\0';
			streams[n_streams] = &stream_store[n_streams];
			streams[n_streams]->fd = parse_num(opt, v, 0);
			streams[n_streams]->id = colon[1] - '0';
			n_streams++;
		} else if (strcmp(opt, "--log") == 0) {
			log_path = argv[++i];
			if (log_path == NULL)
				usage_error("--log needs a value");
		} else if (strcmp(opt, "--log-max-size") == 0) {
			char *end;
			const char *v = argv[++i];
			errno = 0;
			log_max_size = v ? strtoll(v, &end, 10) : -1;
			if (v == NULL || errno != 0 || end == v || *end != '\0' || log_max_size < 0)
				usage_error("--log-max-size: not a valid number: '%s'", v ? v : "");
		} else if (strcmp(opt, "--partial") == 0) {
			partial_prefix = argv[++i];
			if (partial_prefix == NULL)
				usage_error("--partial needs a value");
		} else if (strcmp(opt, "--watch") == 0) {
			if (n_watch == MAX_WATCH)
				usage_error("too many --watch (at most %d)", MAX_WATCH);
			watch[n_watch++] = parse_num(opt, argv[++i], 0);
		} else {
			usage_error("unknown option '%s'", opt);
		}
	}
	if (program == NULL)
		usage_error("missing '-- PROGRAM'");
	if (program[0] == NULL)
		usage_error("missing PROGRAM after '--'");
	if (n_streams > 0 && (log_path == NULL || partial_prefix == NULL))
		usage_error("--out needs --log and --partial");
	for (i = 0; i < n_streams; i++)
		check_open("--out", streams[i]->fd);
	check_open("--listen", listen_fd);
	check_open("--park", park_fd);
	for (i = 0; i < n_watch; i++)
		check_open("--watch", watch[i]);

	prctl(PR_SET_CHILD_SUBREAPER, 1);
	prctl(PR_SET_NAME, "dockyard-shim");
	for (i = 0; i < (int)(sizeof(ignored) / sizeof(ignored[0])); i++)
		signal(ignored[i], SIG_IGN);
	signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would auto-reap the init */
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	sig_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (n_streams > 0) {
		log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		for (i = 0; i < n_streams; i++) {
			load_partial(streams[i]);
			if (streams[i]->len > MAX_HELD || (log_fd >= 0 && log_entries(streams[i]) < 0))
				must_wake = 1;
		}
		if (log_fd < 0)
			must_wake = 1; /* the Python shim says why */
	}
	init_pid = pid;
	if (pid > 0) {
		pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
		if (pid_fd < 0 && errno == ESRCH)
			wake(program);
		/* other errors: the SIGCHLD sweep alone sees the init exit */
	}
	if (sweep(pid) || must_wake)
		wake(program);

	for (;;) {
		int n = 0, first_watch, first_parked, first_out;
		fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = park_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = pid_fd, .events = POLLIN};
		first_watch = n;
		for (i = 0; i < n_watch; i++)
			fds[n++] = (struct pollfd){.fd = watch[i], .events = POLLIN | POLLPRI};
		first_out = n;
		for (i = 0; i < n_streams; i++)
			fds[n++] = (struct pollfd){.fd = streams[i]->fd, .events = POLLIN};
		first_parked = n;
		for (i = 0; i < n_parked; i++)
			fds[n++] = (struct pollfd){.fd = parked[i], .events = POLLIN};

		if (poll(fds, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			wake(program); /* cannot watch any more: let the Python shim take over */
		}
		/* listen, pidfd, watch: any event (POLLHUP, POLLERR too) wakes */
		if (fds[0].revents || fds[3].revents)
			wake(program);
		for (i = first_watch; i < first_out; i++)
			if (fds[i].revents)
				wake(program);
		for (i = first_out; i < first_parked; i++) {
			short ev = fds[i].revents;
			int r = ev == 0 ? 0 : (ev & POLLIN) ? pump(streams[i - first_out]) : 1;
			if (r == 0)
				continue;
			if (r == 1 && pid_fd >= 0) {
				/* the output ended: the init is most likely exiting, and its
				 * pipes close before it turns waitable; give it 100 ms so that
				 * its exit time is noted (note_exit_time) */
				struct pollfd gone = {.fd = pid_fd, .events = POLLIN};
				poll(&gone, 1, 100);
			}
			wake(program);
		}
		if (fds[2].revents) {
			struct signalfd_siginfo si;
			while (read(sig_fd, &si, sizeof(si)) > 0)
				;
			if (sweep(pid))
				wake(program);
		}
		/* parked clients: walk backwards, drop_parked() moves the last one into slot i */
		for (i = n_parked - 1; i >= 0; i--) {
			short ev = fds[first_parked + i].revents;
			char buf[256];
			ssize_t r = 1;
			if (ev & POLLIN)
				r = read(parked[i], buf, sizeof(buf));
			if (ev & POLLIN && r > 0)
				wake(program); /* a client asks for the shim */
			if ((ev & (POLLHUP | POLLERR | POLLNVAL)) || r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				drop_parked(i);
		}
		if (fds[1].revents & POLLIN)
			park_accept();
		else if (fds[1].revents) { /* listener shut down: stop watching it */
			close(park_fd);
			park_fd = -1;
		}
	}
}
