/*
 * exec.conf: what `swiftvmm exec` asks the bundled init to run.
 *
 * The file is a sequence of records, each a key and a value, both ending in a NUL byte:
 *
 *	KEY \0 VALUE \0 KEY \0 VALUE \0 ...
 *
 * NUL is the one byte that cannot occur in an argument, an environment string or a path,
 * so no quoting is needed and a value may hold newlines, spaces or any other byte.  The
 * parser keeps pointers into the buffer: every value is already a C string.  README.md has
 * the keys; Sources/Exec/ExecSpec.swift writes them and checks the same limits before
 * swiftvmm starts, so a file that fails here means the two come from different builds.
 */
#ifndef SWIFTVMM_INIT_CONF_H
#define SWIFTVMM_INIT_CONF_H

#include <stddef.h>
#include <sys/types.h>

/* The first record: key and value.  A new layout gets a new version, not a guess. */
#define CONF_MAGIC_KEY		"swiftvmm-exec"
#define CONF_VERSION		"1"

/* Limits (the same numbers as ExecSpec.Limits in Swift). */
#define CONF_MAX_BYTES		(1 << 20)	/* the whole file */
#define CONF_MAX_ARGS		4096
#define CONF_MAX_ENV		4096
#define CONF_MAX_GROUPS		1024
#define CONF_MAX_RW		64
#define CONF_MAX_MODULES	256
#define CONF_MAX_PATH		4095		/* bytes, without the NUL: PATH_MAX - 1 */
#define CONF_MAX_TAG		36		/* virtio-fs tags: the device's tag field */

struct rw_share {
	const char *tag;	/* virtio-fs tag, e.g. swiftvmm-rw0 */
	const char *path;	/* absolute; mounted there in the guest's root */
};

struct conf {
	char *argv[CONF_MAX_ARGS + 1];	/* NULL-terminated, for execvp */
	size_t argc;
	char *envp[CONF_MAX_ENV + 1];	/* NULL-terminated NAME=VALUE strings */
	size_t envc;
	const char *cwd;		/* "/" unless given */
	uid_t uid;			/* 0 unless given */
	gid_t gid;
	gid_t groups[CONF_MAX_GROUPS];	/* supplementary groups; none unless given */
	size_t ngroups;
	struct rw_share rw[CONF_MAX_RW];
	size_t nrw;
	const char *modules_dir;	/* NULL unless given */
	const char *modules[CONF_MAX_MODULES];	/* initramfs paths, in load order */
	size_t nmodules;
};

/*
 * Read the file at path into buf (cap bytes, at least CONF_MAX_BYTES + 1): its length in
 * *len.  0 on success; -1 with the reason in err.
 */
int conf_read_file(const char *path, char *buf, size_t cap, size_t *len, char *err, size_t errlen);

/*
 * Parse len bytes of buf into c.  0 on success; -1 with a one-line reason in err that
 * names the record (its number and byte offset) and the offending value.
 */
int conf_parse(char *buf, size_t len, struct conf *c, char *err, size_t errlen);

/* 0 for a .ko path, 1 for .ko.xz, .ko.zst or .ko.gz (the kernel decompresses those itself,
 * given MODULE_INIT_COMPRESSED_FILE), -1 for anything else. */
int conf_module_compressed(const char *path);

/* s for a message: printable ASCII as is, other bytes as \xNN, cut at max bytes ("..."). */
void conf_quote(const char *s, size_t max, char *out, size_t outlen);

#endif
