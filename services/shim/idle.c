/* dockyard-shim-idle: the idle monitor a container's shim execve()s into.
 *
 * A shim idle a while replaces its Python interpreter (~7 MB) with this program
 * (~0.2 MB), keeping its PID: it stays the parent and child subreaper of the
 * container's init. On any activity it execve()s back into the Python shim,
 * which resumes from its state file.
 *
 *   dockyard-shim-idle [--pid PID] [--listen FD] [--park FD] [--watch FD]... -- PROGRAM [ARG...]
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
 *   --park FD    a client of this listening AF_UNIX socket (the shim's wake socket,
 *                common/shimwake.py) sends a byte. Connections are accepted (64 kept
 *                at most); one that sends nothing just waits: it sees EOF when the
 *                monitor wakes, for whatever reason.
 *
 * The listen and watch fds pass through the exec untouched (the caller clears
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
	struct pollfd fds[4 + MAX_WATCH + MAX_PARKED];
	int watch[MAX_WATCH], n_watch = 0, listen_fd = -1, sig_fd, pid_fd = -1, i;
	pid_t pid = 0;
	char **program = NULL;
	sigset_t chld;

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
	init_pid = pid;
	if (pid > 0) {
		pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
		if (pid_fd < 0 && errno == ESRCH)
			wake(program);
		/* other errors: the SIGCHLD sweep alone sees the init exit */
	}
	if (sweep(pid))
		wake(program);

	for (;;) {
		int n = 0, first_watch, first_parked;
		fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = park_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = pid_fd, .events = POLLIN};
		first_watch = n;
		for (i = 0; i < n_watch; i++)
			fds[n++] = (struct pollfd){.fd = watch[i], .events = POLLIN | POLLPRI};
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
		for (i = first_watch; i < first_parked; i++)
			if (fds[i].revents) {
				if ((fds[i].revents & POLLHUP) && pid_fd >= 0) {
					/* the output hung up: the init is most likely exiting, and
					 * its pipes close before it turns waitable; give it 100 ms
					 * so that its exit time is noted (note_exit_time) */
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
