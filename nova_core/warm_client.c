/*
 * nova: the compiled client of Nova's warm helper (nova_core/warm.py).
 *
 * A `nova` command served by a warm helper spends most of its caller's time starting
 * Python (13-25 ms on the development VMs) only to hand the helper its argv,
 * environment, working directory, umask and stdio. This program does that part
 * without Python, speaking the same protocol as warm.run: it computes the same key
 * as warm.key, connects to that key's socket, sends the request with its stdin,
 * stdout and stderr (SCM_RIGHTS), forwards signals to the helper's child and exits
 * with the command's status. Whenever the helper cannot take the command (none runs,
 * it refused, the command is interactive or NOVA_WARM=0, another namespace), it
 * executes the Python `nova` script instead, which runs the command and leaves a
 * helper behind, exactly as without this program.
 *
 * Built by scripts/build-client.sh, which fixes the Python interpreter and script at
 * compile time:
 *   cc -O2 -DNOVA_PYTHON='"/venv/bin/python"' -DNOVA_SCRIPT='"/venv/bin/nova-python"'
 *      -DNOVA_PATH0='"/venv/bin"' -o /venv/bin/nova nova_core/warm_client.c
 * NOVA_PATH0 is the folder of the script with symbolic links resolved: the first
 * entry of sys.path Python gives the script.
 *
 * NOVA_WARM_PRINT_KEY=1 prints the key and exits (the Python script does the same),
 * so the two can be compared.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(NOVA_PYTHON) || !defined(NOVA_SCRIPT) || !defined(NOVA_PATH0)
#error "define NOVA_PYTHON, NOVA_SCRIPT and NOVA_PATH0 (see scripts/build-client.sh)"
#endif

extern char **environ;

/* ------------------------------------------------------------------ growing buffers */

struct buf {
    char *data;
    size_t len, cap;
};

static void need(struct buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) {
        fputs("error: out of memory\n", stderr);
        exit(1);
    }
    b->data = data;
    b->cap = cap;
}

static void add(struct buf *b, const char *text, size_t len)
{
    need(b, len);
    memcpy(b->data + b->len, text, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void adds(struct buf *b, const char *text)
{
    add(b, text, strlen(text));
}

static void addf(struct buf *b, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void addf(struct buf *b, const char *format, ...)
{
    char small[512];
    va_list args;
    va_start(args, format);
    int len = vsnprintf(small, sizeof small, format, args);
    va_end(args);
    if (len < 0)
        return;
    if ((size_t)len < sizeof small) {
        add(b, small, (size_t)len);
        return;
    }
    need(b, (size_t)len);
    va_start(args, format);
    vsnprintf(b->data + b->len, (size_t)len + 1, format, args);
    va_end(args);
    b->len += (size_t)len;
}

/* A whole file (empty when it cannot be read), as warm._read. */
static void read_file(struct buf *b, const char *path)
{
    b->len = 0;
    need(b, 0);
    b->data[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    for (;;) {
        need(b, 4096);
        ssize_t got = read(fd, b->data + b->len, 4096);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        b->len += (size_t)got;
    }
    b->data[b->len] = '\0';
    close(fd);
}

/* ------------------------------------------------------------------ falling back */

static char **arguments;
static int argument_count;

/* Run the command with the Python `nova` script: what happens without a helper. */
static void run_in_python(void)
{
    char **argv = calloc((size_t)argument_count + 2, sizeof *argv);
    if (!argv) {
        fputs("error: out of memory\n", stderr);
        exit(1);
    }
    argv[0] = NOVA_PYTHON;
    argv[1] = NOVA_SCRIPT;
    for (int i = 1; i < argument_count; i++)
        argv[i + 1] = arguments[i];
    execv(NOVA_PYTHON, argv);
    fprintf(stderr, "error: cannot start %s: %s\n"
            "  hint: run scripts/setup.sh again (it builds this client for its Python)\n",
            NOVA_PYTHON, strerror(errno));
    exit(1);
}

/* ------------------------------------------------------------------ warm.eligible */

static int is_set(const char *name)
{
    const char *value = getenv(name);
    return value && *value;
}

static int enabled(void)
{
    const char *value = getenv("NOVA_WARM");
    if (!value)
        return 1;
    while (isspace((unsigned char)*value))
        value++;
    size_t len = strlen(value);
    while (len && isspace((unsigned char)value[len - 1]))
        len--;
    char word[8];
    if (len >= sizeof word)
        return 1;
    for (size_t i = 0; i < len; i++)
        word[i] = (char)tolower((unsigned char)value[i]);
    word[len] = '\0';
    return strcmp(word, "0") && strcmp(word, "no") && strcmp(word, "false") && strcmp(word, "off");
}

/* Whether this process runs in other network or mount namespaces than the host's. */
static int elsewhere(void)
{
    static const char *const kinds[] = {"net", "mnt"};
    struct stat mine, host;
    char path[64];
    int visible = 1;
    for (size_t i = 0; i < 2 && visible; i++) {
        snprintf(path, sizeof path, "/proc/self/ns/%s", kinds[i]);
        if (stat(path, &mine) < 0) {
            visible = 0;
            break;
        }
        snprintf(path, sizeof path, "/proc/1/ns/%s", kinds[i]);
        if (stat(path, &host) < 0) {
            visible = 0;
            break;
        }
        if (mine.st_ino != host.st_ino)
            return 1;
    }
    if (visible)
        return 0;
    /* PID 1's namespaces are not ours to see: look for a named network namespace */
    if (stat("/proc/self/ns/net", &mine) < 0)
        return 0;
    DIR *names = opendir("/run/netns");
    if (!names)
        return 0;
    struct dirent *entry;
    int found = 0;
    while (!found && (entry = readdir(names))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        struct stat named;
        char named_path[512];
        snprintf(named_path, sizeof named_path, "/run/netns/%s", entry->d_name);
        if (stat(named_path, &named) == 0 && named.st_dev == mine.st_dev
            && named.st_ino == mine.st_ino)
            found = 1;
    }
    closedir(names);
    return found;
}

static int eligible(void)
{
    static const char *const local[] = {"console", "exec", "warm"};
    if (argument_count < 2 || !enabled())
        return 0;
    for (int i = 1; i < argument_count; i++)
        for (size_t j = 0; j < sizeof local / sizeof *local; j++)
            if (!strcmp(arguments[i], local[j]))
                return 0;
    struct stat info;
    for (int fd = 0; fd < 3; fd++)
        if (fstat(fd, &info) < 0)
            return 0;
    return !elsewhere();
}

/* ------------------------------------------------------------------ warm.key */

static int compare_ints(const void *a, const void *b)
{
    gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
    return x < y ? -1 : x > y;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Python's str.split() with no separator, on ASCII text. */
static int python_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static void key(struct buf *text)
{
    struct buf file = {0};

    int count = getgroups(0, NULL);
    gid_t *groups = calloc(count > 0 ? (size_t)count : 1, sizeof *groups);
    if (count > 0)
        count = getgroups(count, groups);
    if (count < 0)
        count = 0;
    qsort(groups, (size_t)count, sizeof *groups, compare_ints);
    addf(text, "uid=%u gid=%u groups=[", (unsigned)getuid(), (unsigned)getgid());
    for (int i = 0; i < count; i++)
        addf(text, i ? ", %u" : "%u", (unsigned)groups[i]);
    free(groups);
    adds(text, "]\npython=" NOVA_PYTHON "\npath0=" NOVA_PATH0);
    /* flags: -I, -E and -S are never given; -s and -P come from the environment here */
    addf(text, "\nflags=I0E0S0s%dP%d\nhome=", is_set("PYTHONNOUSERSITE"), is_set("PYTHONSAFEPATH"));
    const char *home = getenv("HOME");
    adds(text, home ? home : "");

    size_t variables = 0;
    for (char **entry = environ; *entry; entry++)
        variables++;
    char **python = calloc(variables + 1, sizeof *python);
    size_t found = 0;
    for (char **entry = environ; *entry; entry++)
        if (!strncmp(*entry, "PYTHON", 6) && strchr(*entry, '='))
            python[found++] = *entry;
    qsort(python, found, sizeof *python, compare_strings);
    for (size_t i = 0; i < found; i++) {
        adds(text, "\nenv.");
        adds(text, python[i]);
    }
    free(python);

    static const char *const namespaces[] = {"net", "mnt", "pid", "uts", "ipc", "user", "cgroup"};
    for (size_t i = 0; i < sizeof namespaces / sizeof *namespaces; i++) {
        char path[64];
        struct stat info;
        snprintf(path, sizeof path, "/proc/self/ns/%s", namespaces[i]);
        if (stat(path, &info) == 0)
            addf(text, "\nns.%s=%lu", namespaces[i], (unsigned long)info.st_ino);
        else
            addf(text, "\nns.%s=?", namespaces[i]);
    }

    read_file(&file, "/proc/self/cgroup");
    adds(text, "\ncgroup=");
    for (size_t i = 0; i < file.len; i++)
        add(text, file.data[i] == '\n' ? ";" : file.data + i, 1);

    read_file(&file, "/proc/self/status");
    for (char *line = file.data; line && *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10)
            || !strncmp(line, "Seccomp", 7)) {
            adds(text, "\n");
            for (size_t i = 0; i < len; i++)
                if (line[i] != '\t')
                    add(text, line + i, 1);
        }
        line = end ? end + 1 : NULL;
    }

    read_file(&file, "/proc/self/limits");
    adds(text, "\nlimits=");
    int words = 0;
    for (size_t i = 0; i < file.len;) {
        while (i < file.len && python_space(file.data[i]))
            i++;
        size_t start = i;
        while (i < file.len && !python_space(file.data[i]))
            i++;
        if (i > start) {
            if (words++)
                adds(text, " ");
            add(text, file.data + start, i - start);
        }
    }
    free(file.data);

    mode_t mask = umask(022);
    umask(mask);
    addf(text, "\numask=%o", (unsigned)mask);
}

/* warm.socket_path: the key's bytes as one little-endian number, modulo 2**61 - 1. */
static void socket_path(struct buf *path, const struct buf *text)
{
    const uint64_t prime = (UINT64_C(1) << 61) - 1;
    uint64_t digest = 0;
    for (size_t i = text->len; i-- > 0;)
        digest = (uint64_t)(((unsigned __int128)digest * 256 + (unsigned char)text->data[i]) % prime);
    const char *chosen = getenv("NOVA_WARM_DIR");
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (chosen && *chosen)
        adds(path, chosen);
    else if (getuid() == 0)
        adds(path, "/run/nova-warm");
    else if (runtime && *runtime)
        addf(path, "%s/nova-warm", runtime);
    else
        addf(path, "/tmp/nova-warm-%u", (unsigned)getuid());
    addf(path, "/%016llx.sock", (unsigned long long)digest);
}

/* ------------------------------------------------------------------ warm.run */

static pid_t child;

static void forward(int number)
{
    if (child > 0)
        kill(child, number);
}

/* The next line from the helper (without its newline), or NULL at its end. */
static char *reply_line(int sock, struct buf *pending)
{
    static struct buf line;
    for (;;) {
        char *end = pending->len ? memchr(pending->data, '\n', pending->len) : NULL;
        if (end) {
            size_t len = (size_t)(end - pending->data);
            line.len = 0;
            add(&line, pending->data, len);
            memmove(pending->data, end + 1, pending->len - len - 1);
            pending->len -= len + 1;
            return line.data;
        }
        need(pending, 4096);
        ssize_t got = recv(sock, pending->data + pending->len, 4096, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return NULL;
        pending->len += (size_t)got;
    }
}

static int send_all(int sock, const char *data, size_t len)
{
    while (len) {
        ssize_t sent = send(sock, data, len, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return -1;
        data += sent;
        len -= (size_t)sent;
    }
    return 0;
}

/* Hand the command to the helper; its exit status, or -1 when no helper took it. */
static int run(void)
{
    struct buf text = {0}, path = {0}, request = {0}, pending = {0};
    key(&text);
    if (is_set("NOVA_WARM_PRINT_KEY")) {
        fwrite(text.data, 1, text.len, stdout);
        fputc('\n', stdout);
        exit(0);
    }
    socket_path(&path, &text);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (path.len >= sizeof address.sun_path)
        return -1;
    memcpy(address.sun_path, path.data, path.len + 1);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    if (connect(sock, (struct sockaddr *)&address, sizeof address) < 0) {
        close(sock);
        return -1;
    }

    char *cwd = getcwd(NULL, 0);
    if (!cwd) {
        close(sock);
        return -1;
    }
    mode_t mask = umask(022);
    umask(mask);
    /* fields: key, cwd, umask, argument count, arguments, NAME=VALUE..., split by NUL */
    need(&request, 8);
    request.len = 8;
    add(&request, text.data, text.len);
    add(&request, "", 1);
    adds(&request, cwd);
    add(&request, "", 1);
    addf(&request, "%u", (unsigned)mask);
    add(&request, "", 1);
    addf(&request, "%d", argument_count - 1);
    for (int i = 1; i < argument_count; i++) {
        add(&request, "", 1);
        adds(&request, arguments[i]);
    }
    for (char **entry = environ; *entry; entry++) {
        if (!strchr(*entry, '='))
            continue;
        add(&request, "", 1);
        adds(&request, *entry);
    }
    uint64_t size = request.len - 8;
    for (int i = 0; i < 8; i++)
        request.data[i] = (char)(size >> (8 * i));
    free(cwd);

    int fds[3] = {0, 1, 2};
    union {
        char space[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec part = {.iov_base = request.data, .iov_len = request.len};
    struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1,
                             .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(rights), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(sock, &message, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 || send_all(sock, request.data + sent, request.len - (size_t)sent) < 0) {
        close(sock);
        return -1;
    }

    char *first = reply_line(sock, &pending);
    if (!first || first[0] != 'P') {
        close(sock);
        return -1; /* refused (another key, or the helper's code changed): Python runs it */
    }
    child = (pid_t)strtol(first + 1, NULL, 10);
    static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    struct sigaction action = {.sa_handler = forward};
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaction(forwarded[i], &action, NULL);
    char *last = reply_line(sock, &pending);
    if (!last || last[0] != 'X') {
        fputs("error: the warm helper ended without the command's exit status\n"
              "  hint: run it again; NOVA_WARM=0 runs commands without the helper\n", stderr);
        return 1;
    }
    return (int)(strtol(last + 1, NULL, 10) & 0xFF);
}

int main(int argc, char **argv)
{
    arguments = argv;
    argument_count = argc;
    if (eligible() || is_set("NOVA_WARM_PRINT_KEY")) {
        int code = run();
        if (code >= 0)
            return code;
    }
    run_in_python();
    return 1;
}
