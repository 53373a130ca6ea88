/*
 * The exec.conf parser (conf.h has the layout, README.md the keys).  It runs in PID 1, where
 * a mistake means a guest that cannot say what went wrong, so it trusts nothing in the
 * file: every record is bounded by the buffer, every count by a limit, every number is
 * checked digit by digit, and each refusal names the record and the value that caused it.
 * It also builds as part of a host program (check_parse.c), which is how swiftvmm's tests
 * check it against the Swift encoder.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"

void conf_quote(const char *s, size_t max, char *out, size_t outlen)
{
	size_t o = 0, i;

	if (outlen < 8) {
		if (outlen)
			out[0] = '\0';
		return;
	}
	/* Leave room for the closing quote, "..." and the NUL. */
	outlen -= 5;
	out[o++] = '"';
	for (i = 0; s[i] && i < max; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (o + 4 > outlen)
			break;
		if (ch == '"' || ch == '\\')
			o += (size_t)snprintf(out + o, 3, "\\%c", ch);
		else if (ch >= 0x20 && ch < 0x7f)
			out[o++] = (char)ch;
		else
			o += (size_t)snprintf(out + o, 5, "\\x%02x", ch);
	}
	out[o++] = '"';
	if (s[i])
		o += (size_t)snprintf(out + o, 4, "...");
	out[o] = '\0';
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

int conf_read_file(const char *path, char *buf, size_t cap, size_t *len, char *err, size_t errlen)
{
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return fail(err, errlen, "%s: %s", path, strerror(errno));
	/* Read up to one byte past the limit instead of trusting st_size: too big is too big,
	 * however the file claims to be. */
	while (done < cap) {
		ssize_t n = read(fd, buf + done, cap - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			close(fd);
			return fail(err, errlen, "%s: %s", path, strerror(e));
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	if (done > CONF_MAX_BYTES)
		return fail(err, errlen, "%s is larger than %d bytes", path, CONF_MAX_BYTES);
	*len = done;
	return 0;
}

/* A uid or gid: 1 to 10 decimal digits, at most 4294967294 ((uid_t)-1 means "no change"
 * to setuid and friends, so it is never a real id). */
static int parse_id(const char *s, size_t n, unsigned int *out)
{
	unsigned long long v = 0;
	size_t i;

	if (n == 0 || n > 10)
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > 4294967294ULL)
		return -1;
	*out = (unsigned int)v;
	return 0;
}

/* An absolute path of at most CONF_MAX_PATH bytes without "." or ".." components: paths
 * are joined to mount points, where ".." could climb out of the guest's new root.
 * NULL if fine, else why not. */
static const char *path_problem(const char *p)
{
	size_t n = strlen(p);
	const char *c = p;

	if (n == 0)
		return "is empty";
	if (p[0] != '/')
		return "is not an absolute path";
	if (n > CONF_MAX_PATH)
		return "is longer than 4095 bytes";
	while (*c) {
		const char *end;
		size_t len;

		while (*c == '/')
			c++;
		end = strchr(c, '/');
		len = end ? (size_t)(end - c) : strlen(c);
		if ((len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
			return "has a \".\" or \"..\" component";
		c += len;
	}
	return NULL;
}

int conf_module_compressed(const char *path)
{
	static const char *const suffixes[] = { ".ko", ".ko.xz", ".ko.zst", ".ko.gz" };
	const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
	size_t n = strlen(name), i;

	/* A name before the suffix: "/x/.ko" is no module. */
	for (i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		size_t s = strlen(suffixes[i]);

		if (n > s && strcmp(name + n - s, suffixes[i]) == 0)
			return i > 0;
	}
	return -1;
}

int conf_parse(char *buf, size_t len, struct conf *c, char *err, size_t errlen)
{
	size_t pos = 0, record = 0;
	const char *pending_tag = NULL;
	int seen_cwd = 0, seen_uid = 0, seen_gid = 0, seen_groups = 0;
	char q[160];

	memset(c, 0, sizeof *c);
	c->cwd = "/";
	if (len > CONF_MAX_BYTES)
		return fail(err, errlen, "the file is %zu bytes, more than %d", len, CONF_MAX_BYTES);
	if (len == 0)
		return fail(err, errlen, "the file is empty");

	while (pos < len) {
		char *key = buf + pos, *value, *end;
		size_t at = pos;
		const char *why;

		end = memchr(key, '\0', len - pos);
		if (!end) {
			conf_quote(key, 32, q, sizeof q);
			return fail(err, errlen, "record %zu at byte %zu: the key %s runs to the end of the "
				    "file without its NUL (truncated?)", record + 1, at, q);
		}
		value = end + 1;
		conf_quote(key, 32, q, sizeof q);
		if ((size_t)(value - buf) >= len)
			return fail(err, errlen, "record %zu (%s) at byte %zu: the file ends before its value",
				    record + 1, q, at);
		end = memchr(value, '\0', len - (size_t)(value - buf));
		if (!end)
			return fail(err, errlen, "record %zu (%s) at byte %zu: the value runs to the end of the "
				    "file without its NUL (truncated?)", record + 1, q, at);
		pos = (size_t)(end + 1 - buf);
		record++;

/* The refusals below all start with where the record is and what its key is. */
#define BAD(...) do { \
		char m_[512]; \
		snprintf(m_, sizeof m_, __VA_ARGS__); \
		return fail(err, errlen, "record %zu (%s) at byte %zu: %s", record, key, at, m_); \
	} while (0)
#define VALUE_Q (conf_quote(value, 64, q, sizeof q), q)

		if (record == 1) {
			if (strcmp(key, CONF_MAGIC_KEY) != 0)
				return fail(err, errlen, "the file does not start with a %s record: not a "
					    "swiftvmm exec configuration", CONF_MAGIC_KEY);
			if (strcmp(value, CONF_VERSION) != 0)
				BAD("format version %s, but this init reads version %s (swiftvmm and "
				    "its init come from different builds?)", VALUE_Q, CONF_VERSION);
			continue;
		}
		if (pending_tag && strcmp(key, "rw-path") != 0) {
			conf_quote(pending_tag, 64, q, sizeof q);
			BAD("the rw-tag %s before it is not followed by its rw-path", q);
		}

		if (strcmp(key, "arg") == 0) {
			if (c->argc == CONF_MAX_ARGS)
				BAD("more than %d arguments", CONF_MAX_ARGS);
			c->argv[c->argc++] = value;
		} else if (strcmp(key, "env") == 0) {
			char *eq = strchr(value, '=');

			if (!eq || eq == value)
				BAD("%s is not NAME=VALUE", VALUE_Q);
			if (c->envc == CONF_MAX_ENV)
				BAD("more than %d environment strings", CONF_MAX_ENV);
			c->envp[c->envc++] = value;
		} else if (strcmp(key, "cwd") == 0) {
			if (seen_cwd++)
				BAD("given twice");
			if ((why = path_problem(value)))
				BAD("%s %s", VALUE_Q, why);
			c->cwd = value;
		} else if (strcmp(key, "uid") == 0 || strcmp(key, "gid") == 0) {
			int is_uid = key[0] == 'u';
			unsigned int id;

			if ((*(is_uid ? &seen_uid : &seen_gid))++)
				BAD("given twice");
			if (parse_id(value, strlen(value), &id) != 0)
				BAD("%s is not a number from 0 to 4294967294", VALUE_Q);
			if (is_uid)
				c->uid = (uid_t)id;
			else
				c->gid = (gid_t)id;
		} else if (strcmp(key, "groups") == 0) {
			const char *s = value;

			if (seen_groups++)
				BAD("given twice");
			/* "" is no groups; else ids separated by single commas. */
			while (*value && s) {
				const char *comma = strchr(s, ',');
				size_t n = comma ? (size_t)(comma - s) : strlen(s);
				unsigned int id;

				if (c->ngroups == CONF_MAX_GROUPS)
					BAD("more than %d groups", CONF_MAX_GROUPS);
				if (parse_id(s, n, &id) != 0)
					BAD("%s is not a comma-separated list of numbers from 0 to "
					    "4294967294", VALUE_Q);
				c->groups[c->ngroups++] = (gid_t)id;
				s = comma ? comma + 1 : NULL;
			}
		} else if (strcmp(key, "rw-tag") == 0) {
			size_t n = strlen(value);

			if (n == 0 || n > CONF_MAX_TAG)
				BAD("tag %s is not 1 to %d bytes long", VALUE_Q, CONF_MAX_TAG);
			if (c->nrw == CONF_MAX_RW)
				BAD("more than %d writable shares", CONF_MAX_RW);
			pending_tag = value;
		} else if (strcmp(key, "rw-path") == 0) {
			if (!pending_tag)
				BAD("not after an rw-tag record");
			if ((why = path_problem(value)))
				BAD("%s %s", VALUE_Q, why);
			if (value[strspn(value, "/")] == '\0')
				BAD("a share cannot be mounted over the root itself; share a directory "
				    "below it");
			c->rw[c->nrw].tag = pending_tag;
			c->rw[c->nrw++].path = value;
			pending_tag = NULL;
		} else if (strcmp(key, "modules-dir") == 0) {
			if (c->modules_dir)
				BAD("given twice");
			if ((why = path_problem(value)))
				BAD("%s %s", VALUE_Q, why);
			c->modules_dir = value;
		} else if (strcmp(key, "module") == 0) {
			if (c->nmodules == CONF_MAX_MODULES)
				BAD("more than %d modules", CONF_MAX_MODULES);
			if ((why = path_problem(value)))
				BAD("%s %s", VALUE_Q, why);
			if (conf_module_compressed(value) < 0)
				BAD("%s is not a .ko, .ko.xz, .ko.zst or .ko.gz file", VALUE_Q);
			c->modules[c->nmodules++] = value;
		} else {
			conf_quote(key, 32, q, sizeof q);
			return fail(err, errlen, "record %zu at byte %zu: unknown key %s", record, at, q);
		}
#undef BAD
#undef VALUE_Q
	}
	if (pending_tag) {
		conf_quote(pending_tag, 64, q, sizeof q);
		return fail(err, errlen, "the file ends after rw-tag %s, without its rw-path", q);
	}
	if (c->argc == 0)
		return fail(err, errlen, "no arg record: nothing to run");
	c->argv[c->argc] = NULL;
	c->envp[c->envc] = NULL;
	return 0;
}
