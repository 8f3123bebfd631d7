/*
 * pfs_slowfs: a read-only FUSE passthrough that adds a fixed delay to every metadata
 * operation, a stand-in for a parallel file system (Lustre, GPFS) whose metadata server is
 * under load. Data reads are passed through without delay: on such systems bulk reads are
 * served by many storage servers and scale; it is lookups, stats and opens that queue.
 *
 * Delayed and counted: getattr (the high-level API serves every kernel LOOKUP through it),
 * access, readlink, opendir, readdir, open, statfs. Counted, not delayed: read.
 * The kernel is told to cache nothing (entry/attr/negative timeouts 0), so every path walk
 * reaches this server, as every open reaches the metadata server of a real PFS.
 *
 * PFS_SLOWFS_WRITABLE=1 in the environment mounts it writable (bench/overlay_bench installs
 * into it): mkdir, create, unlink, rmdir, rename, symlink and every setattr (chmod, chown,
 * truncate, utimens) are metadata operations, delayed and counted; write and fsync are counted,
 * not delayed. New entries belong to the caller (the server runs as root with allow_other).
 *
 * Reads of an open file ask the server no getattr: FUSE's auto_inval_data is turned off, so the
 * kernel serves a read from its page cache or sends READ alone. That is how a Lustre or GPFS
 * client reads a file it has open: the data come from the storage servers (or its cache) under
 * a lock it holds, and the metadata server is not asked again. With auto_inval_data (the
 * libfuse default) and attr_timeout 0, the kernel sends a GETATTR before every read, cached
 * pages or not: one delayed metadata operation per read() call, which squashfuse (few large
 * reads of a SIF) hardly notices and fuse2fs (a pread per 1-4 KiB block of its image, ~70 per
 * imported module) pays for dearly. PFS_SLOWFS_READ_REVALIDATE=1 turns it back on (the model
 * of the issue-5 figures in docs/BENCHMARKS.md; both benches: --read-revalidate).
 *
 * Counters: read the virtual file /.slowfs-stats (not listed in its directory; serving it
 * is neither delayed nor counted): "getattr N\naccess N\n...\ntotal N\n".
 *
 * Build: gcc -O2 -Wall -o pfs_slowfs pfs_slowfs.c $(pkg-config fuse3 --cflags --libs)
 * Usage: pfs_slowfs SOURCE_DIR MOUNTPOINT DELAY_US [fuse options, e.g. -f -o allow_other]
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

enum { OP_GETATTR, OP_ACCESS, OP_READLINK, OP_OPENDIR, OP_READDIR, OP_OPEN, OP_STATFS,
       OP_READ, OP_MKDIR, OP_CREATE, OP_REMOVE, OP_RENAME, OP_SETATTR, OP_WRITE, OP_FSYNC,
       OP_COUNT };
static const char *op_names[OP_COUNT] = {"getattr", "access", "readlink", "opendir",
                                         "readdir", "open", "statfs", "read", "mkdir", "create",
                                         "remove", "rename", "setattr", "write", "fsync"};
static int writable;

/* Data, not metadata: counted, never delayed, not in the "metadata" total. */
static int is_data(int op)
{
    return op == OP_READ || op == OP_WRITE || op == OP_FSYNC;
}
static atomic_ulong op_counts[OP_COUNT];
static char source_dir[PATH_MAX];
static long delay_us;
static const char stats_path[] = "/.slowfs-stats";

/* Count one operation and, for metadata, wait like a loaded metadata server would. */
static void serve(int op)
{
    atomic_fetch_add(&op_counts[op], 1);
    if (is_data(op) || delay_us <= 0)
        return;
    struct timespec ts = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int real_path(char *out, const char *path)
{
    int n = snprintf(out, PATH_MAX, "%s%s", source_dir, path);
    return n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static int stats_text(char *buf, size_t size)
{
    size_t used = 0;
    unsigned long total = 0;
    for (int i = 0; i < OP_COUNT; i++) {
        unsigned long n = atomic_load(&op_counts[i]);
        if (!is_data(i))
            total += n;
        used += snprintf(buf + used, size - used, "%s %lu\n", op_names[i], n);
    }
    used += snprintf(buf + used, size - used, "metadata %lu\n", total);
    return (int)used;
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    const char *reval = getenv("PFS_SLOWFS_READ_REVALIDATE");
    if (!reval || strcmp(reval, "1") != 0) /* reads of an open file: no metadata (above) */
        conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    cfg->entry_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->use_ino = 1;
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    if (strcmp(path, stats_path) == 0) {
        char buf[512];
        memset(st, 0, sizeof(*st));
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = stats_text(buf, sizeof(buf));
        return 0;
    }
    serve(OP_GETATTR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return lstat(real, st) == -1 ? -errno : 0;
}

static int sf_access(const char *path, int mask)
{
    serve(OP_ACCESS);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return access(real, mask) == -1 ? -errno : 0;
}

static int sf_readlink(const char *path, char *buf, size_t size)
{
    serve(OP_READLINK);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    ssize_t n = readlink(real, buf, size - 1);
    if (n == -1)
        return -errno;
    buf[n] = '\0';
    return 0;
}

static int sf_opendir(const char *path, struct fuse_file_info *fi)
{
    serve(OP_OPENDIR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    DIR *dir = opendir(real);
    if (!dir)
        return -errno;
    fi->fh = (uint64_t)(uintptr_t)dir;
    return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)path;
    (void)flags;
    serve(OP_READDIR);
    DIR *dir = (DIR *)(uintptr_t)fi->fh;
    if (offset == 0)
        rewinddir(dir);
    else
        seekdir(dir, offset);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        struct stat st = {.st_ino = entry->d_ino, .st_mode = (mode_t)DTTOIF(entry->d_type)};
        if (fill(buf, entry->d_name, &st, telldir(dir), 0))
            break;
    }
    return 0;
}

static int sf_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    closedir((DIR *)(uintptr_t)fi->fh);
    return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
    if (strcmp(path, stats_path) == 0) {
        fi->direct_io = 1; /* fresh numbers on every read */
        fi->fh = (uint64_t)-1;
        return 0;
    }
    serve(OP_OPEN);
    if (!writable && (fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    int fd = open(real, fi->flags);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi)
{
    if (fi->fh == (uint64_t)-1 && strcmp(path, stats_path) == 0) {
        char text[512];
        int len = stats_text(text, sizeof(text));
        if (offset >= len)
            return 0;
        size_t n = (size_t)(len - offset) < size ? (size_t)(len - offset) : size;
        memcpy(buf, text + offset, n);
        return (int)n;
    }
    serve(OP_READ);
    ssize_t n = pread((int)fi->fh, buf, size, offset);
    return n == -1 ? -errno : (int)n;
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    if (fi->fh != (uint64_t)-1)
        close((int)fi->fh);
    return 0;
}

static int sf_statfs(const char *path, struct statvfs *st)
{
    serve(OP_STATFS);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return statvfs(real, st) == -1 ? -errno : 0;
}

/* --- writable mode ------------------------------------------------------------------------ */

/* Give a new entry to the process that asked for it. */
static int own(const char *real)
{
    struct fuse_context *ctx = fuse_get_context();
    return lchown(real, ctx->uid, ctx->gid) == -1 ? -errno : 0;
}

static int sf_mkdir(const char *path, mode_t mode)
{
    serve(OP_MKDIR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return mkdir(real, mode) == -1 ? -errno : own(real);
}

static int sf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    serve(OP_CREATE);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    int fd = open(real, fi->flags | O_CREAT, mode);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return own(real);
}

static int sf_unlink(const char *path)
{
    serve(OP_REMOVE);
    char real[PATH_MAX];
    int err = real_path(real, path);
    return err ? err : (unlink(real) == -1 ? -errno : 0);
}

static int sf_rmdir(const char *path)
{
    serve(OP_REMOVE);
    char real[PATH_MAX];
    int err = real_path(real, path);
    return err ? err : (rmdir(real) == -1 ? -errno : 0);
}

static int sf_symlink(const char *target, const char *path)
{
    serve(OP_CREATE);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return symlink(target, real) == -1 ? -errno : own(real);
}

static int sf_rename(const char *from, const char *to, unsigned int flags)
{
    serve(OP_RENAME);
    if (flags)
        return -EINVAL;
    char real_from[PATH_MAX], real_to[PATH_MAX];
    int err = real_path(real_from, from);
    if (!err)
        err = real_path(real_to, to);
    return err ? err : (rename(real_from, real_to) == -1 ? -errno : 0);
}

static int sf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    serve(OP_SETATTR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    return err ? err : (chmod(real, mode) == -1 ? -errno : 0);
}

static int sf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    (void)fi;
    serve(OP_SETATTR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    return err ? err : (lchown(real, uid, gid) == -1 ? -errno : 0);
}

static int sf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    serve(OP_SETATTR);
    if (fi)
        return ftruncate((int)fi->fh, size) == -1 ? -errno : 0;
    char real[PATH_MAX];
    int err = real_path(real, path);
    return err ? err : (truncate(real, size) == -1 ? -errno : 0);
}

static int sf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)fi;
    serve(OP_SETATTR);
    char real[PATH_MAX];
    int err = real_path(real, path);
    if (err)
        return err;
    return utimensat(AT_FDCWD, real, tv, AT_SYMLINK_NOFOLLOW) == -1 ? -errno : 0;
}

static int sf_write(const char *path, const char *buf, size_t size, off_t offset,
                    struct fuse_file_info *fi)
{
    (void)path;
    serve(OP_WRITE);
    ssize_t n = pwrite((int)fi->fh, buf, size, offset);
    return n == -1 ? -errno : (int)n;
}

static int sf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    serve(OP_FSYNC);
    int res = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    return res == -1 ? -errno : 0;
}

static int sf_fallocate(const char *path, int mode, off_t offset, off_t length,
                        struct fuse_file_info *fi)
{
    (void)path;
    serve(OP_SETATTR);
    return fallocate((int)fi->fh, mode, offset, length) == -1 ? -errno : 0;
}

static const struct fuse_operations sf_ops = {
    .mkdir = sf_mkdir,
    .create = sf_create,
    .unlink = sf_unlink,
    .rmdir = sf_rmdir,
    .symlink = sf_symlink,
    .rename = sf_rename,
    .chmod = sf_chmod,
    .chown = sf_chown,
    .truncate = sf_truncate,
    .utimens = sf_utimens,
    .write = sf_write,
    .fsync = sf_fsync,
    .fallocate = sf_fallocate,
    .init = sf_init,
    .getattr = sf_getattr,
    .access = sf_access,
    .readlink = sf_readlink,
    .opendir = sf_opendir,
    .readdir = sf_readdir,
    .releasedir = sf_releasedir,
    .open = sf_open,
    .read = sf_read,
    .release = sf_release,
    .statfs = sf_statfs,
};

int main(int argc, char *argv[])
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s SOURCE_DIR MOUNTPOINT DELAY_US [fuse options]\n", argv[0]);
        return 2;
    }
    if (!realpath(argv[1], source_dir)) {
        perror(argv[1]);
        return 1;
    }
    char *end;
    delay_us = strtol(argv[3], &end, 10);
    if (*end || delay_us < 0) {
        fprintf(stderr, "%s: DELAY_US must be a number of microseconds\n", argv[0]);
        return 2;
    }
    const char *w = getenv("PFS_SLOWFS_WRITABLE");
    writable = w && strcmp(w, "1") == 0;
    /* fuse_main sees: prog MOUNTPOINT -o ro,default_permissions [rest] (rw if writable) */
    char **fargv = calloc((size_t)argc + 2, sizeof(char *));
    int fargc = 0;
    fargv[fargc++] = argv[0];
    fargv[fargc++] = argv[2];
    fargv[fargc++] = writable ? "-orw,default_permissions,fsname=pfs_slowfs"
                              : "-oro,default_permissions,fsname=pfs_slowfs";
    for (int i = 4; i < argc; i++)
        fargv[fargc++] = argv[i];
    return fuse_main(fargc, fargv, &sf_ops, NULL);
}
