/*
 * A thin layer over libext2fs for src/ext4.rs. It exists so the Rust side never has to mirror
 * libext2fs' struct layouts: every function takes plain integers, C strings and buffers, and
 * returns a libext2fs/errno error code (0 = success) that pi_strerror() turns into text.
 */
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

/* Superblock facts the Rust side needs for its safety checks. */
struct pi_info {
	uint64_t block_size;
	uint64_t blocks_count;
	uint64_t free_blocks;
	uint64_t reserved_blocks;
	uint64_t free_inodes;
	uint64_t feature_compat;
	uint64_t feature_incompat;
	uint64_t feature_ro_compat;
	uint64_t state;
	uint64_t last_orphan;
};

/* One inode's metadata, as the Rust side sees it. */
struct pi_stat {
	uint64_t mode;
	uint64_t uid;
	uint64_t gid;
	uint64_t size;
	int64_t mtime;
	uint64_t links;
	uint64_t alloc_bytes;
};

static pthread_once_t error_table_once = PTHREAD_ONCE_INIT;

static void pi_init_error_table(void)
{
	initialize_ext2_error_table();
}

const char *pi_strerror(long code)
{
	pthread_once(&error_table_once, pi_init_error_table);
	return error_message((errcode_t)code);
}

long pi_open(const char *path, uint64_t offset, int writable, ext2_filsys *out)
{
	char opts[64];
	ext2_filsys fs = NULL;
	errcode_t err;
	int flags = EXT2_FLAG_64BITS | (writable ? EXT2_FLAG_RW : 0);

	pthread_once(&error_table_once, pi_init_error_table);
	snprintf(opts, sizeof(opts), "offset=%llu", (unsigned long long)offset);
	err = ext2fs_open2(path, opts, flags, 0, 0, unix_io_manager, &fs);
	if (err)
		return err;
	/* libext2fs stamps new inodes and the superblock with fs->now (time(NULL) when 0);
	 * start from the filesystem's own last write time so output never depends on the clock. */
	fs->now = fs->super->s_wtime ? fs->super->s_wtime : 1;
	if (writable) {
		err = ext2fs_read_bitmaps(fs);
		if (err) {
			ext2fs_free(fs);
			return err;
		}
	}
	*out = fs;
	return 0;
}

void pi_info(ext2_filsys fs, struct pi_info *out)
{
	struct ext2_super_block *sb = fs->super;

	out->block_size = fs->blocksize;
	out->blocks_count = ext2fs_blocks_count(sb);
	out->free_blocks = ext2fs_free_blocks_count(sb);
	out->reserved_blocks = ext2fs_r_blocks_count(sb);
	out->free_inodes = sb->s_free_inodes_count;
	out->feature_compat = sb->s_feature_compat;
	out->feature_incompat = sb->s_feature_incompat;
	out->feature_ro_compat = sb->s_feature_ro_compat;
	out->state = sb->s_state;
	out->last_orphan = sb->s_last_orphan;
}

void pi_set_now(ext2_filsys fs, int64_t now)
{
	fs->now = (time_t)now;
}

/* Writes everything out without fsync: whoever owns the image file syncs it once at the end
 * (a build's PendingOutput), so the kernel writes the image back while other work goes on. */
long pi_close(ext2_filsys fs)
{
	errcode_t err = ext2fs_close2(fs, EXT2_FLAG_FLUSH_NO_SYNC);

	if (err)
		ext2fs_free(fs);
	return err;
}

/* Resolves an absolute path; follow != 0 also follows a final symlink. */
long pi_namei(ext2_filsys fs, const char *path, int follow, uint32_t *ino)
{
	ext2_ino_t found = 0;
	errcode_t err;

	if (follow)
		err = ext2fs_namei_follow(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, &found);
	else
		err = ext2fs_namei(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, &found);
	*ino = found;
	return err;
}

long pi_lookup(ext2_filsys fs, uint32_t dir, const char *name, uint32_t *ino)
{
	ext2_ino_t found = 0;
	errcode_t err = ext2fs_lookup(fs, dir, name, strlen(name), NULL, &found);

	*ino = found;
	return err;
}

static int64_t decode_time(uint32_t lo, uint32_t extra, int has_extra)
{
	int64_t t = (int32_t)lo;

	if (has_extra)
		t += (int64_t)(extra & EXT4_EPOCH_MASK) << 32;
	return t;
}

static errcode_t read_large(ext2_filsys fs, uint32_t ino, struct ext2_inode_large *inode)
{
	memset(inode, 0, sizeof(*inode));
	return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)inode, sizeof(*inode));
}

static errcode_t write_large(ext2_filsys fs, uint32_t ino, struct ext2_inode_large *inode)
{
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)inode, sizeof(*inode));
}

/* Whether the inode has room for the *_extra timestamp words (and crtime). */
static int has_field(ext2_filsys fs, struct ext2_inode_large *inode, size_t end)
{
	return EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE &&
	       (size_t)EXT2_GOOD_OLD_INODE_SIZE + inode->i_extra_isize >= end;
}

#define FIELD_END(f) (offsetof(struct ext2_inode_large, f) + sizeof(((struct ext2_inode_large *)0)->f))

long pi_stat(ext2_filsys fs, uint32_t ino, struct pi_stat *out)
{
	struct ext2_inode_large inode;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	out->mode = inode.i_mode;
	out->uid = inode_uid(inode);
	out->gid = inode_gid(inode);
	out->size = EXT2_I_SIZE(&inode);
	out->mtime = decode_time(inode.i_mtime, inode.i_mtime_extra,
				 has_field(fs, &inode, FIELD_END(i_mtime_extra)));
	out->links = inode.i_links_count;
	out->alloc_bytes = ext2fs_get_stat_i_blocks(fs, EXT2_INODE(&inode)) * 512;
	return 0;
}

/* Sets permission bits, owner and all timestamps (nanoseconds zero). */
static errcode_t apply_attrs(ext2_filsys fs, struct ext2_inode_large *inode, uint32_t mode,
			     uint32_t uid, uint32_t gid, int64_t t)
{
	uint32_t lo = (uint32_t)t;
	int64_t epoch = (t - (int64_t)(int32_t)lo) >> 32;
	int extra = has_field(fs, inode, FIELD_END(i_atime_extra));

	if (epoch < 0 || epoch > EXT4_EPOCH_MASK || (epoch && !extra))
		return EOVERFLOW;
	inode->i_mode = (inode->i_mode & LINUX_S_IFMT) | (mode & 07777);
	inode->i_uid = uid & 0xffff;
	ext2fs_set_i_uid_high(*inode, uid >> 16);
	inode->i_gid = gid & 0xffff;
	ext2fs_set_i_gid_high(*inode, gid >> 16);
	inode->i_atime = inode->i_ctime = inode->i_mtime = lo;
	if (extra)
		inode->i_atime_extra = inode->i_ctime_extra = inode->i_mtime_extra = (uint32_t)epoch;
	if (has_field(fs, inode, FIELD_END(i_crtime_extra))) {
		inode->i_crtime = lo;
		inode->i_crtime_extra = (uint32_t)epoch;
	}
	return 0;
}

long pi_set_attrs(ext2_filsys fs, uint32_t ino, uint32_t mode, uint32_t uid, uint32_t gid, int64_t t)
{
	struct ext2_inode_large inode;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	err = apply_attrs(fs, &inode, mode, uid, gid, t);
	if (err)
		return err;
	return write_large(fs, ino, &inode);
}

/* ext2fs_link without automatic growth of unindexed directories; grow once and retry,
 * as mke2fs -d does. */
static errcode_t link_growing(ext2_filsys fs, uint32_t dir, const char *name, uint32_t ino, int ftype)
{
	errcode_t err = ext2fs_link(fs, dir, name, ino, ftype);

	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(fs, dir);
		if (err)
			return err;
		err = ext2fs_link(fs, dir, name, ino, ftype);
	}
	return err;
}

long pi_mkdir(ext2_filsys fs, uint32_t parent, const char *name, uint32_t *ino)
{
	errcode_t err = ext2fs_mkdir(fs, parent, 0, name);

	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(fs, parent);
		if (err)
			return err;
		err = ext2fs_mkdir(fs, parent, 0, name);
	}
	if (err)
		return err;
	return pi_lookup(fs, parent, name, ino);
}

long pi_symlink(ext2_filsys fs, uint32_t parent, const char *name, const char *target, uint32_t *ino)
{
	errcode_t err = ext2fs_symlink(fs, parent, 0, name, target);

	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(fs, parent);
		if (err)
			return err;
		err = ext2fs_symlink(fs, parent, 0, name, target);
	}
	if (err)
		return err;
	return pi_lookup(fs, parent, name, ino);
}

/* Creates an empty, extent-mapped regular file (the same steps as mke2fs -d). */
long pi_create(ext2_filsys fs, uint32_t parent, const char *name, uint32_t *ino)
{
	struct ext2_inode_large inode;
	ext2_ino_t newino;
	errcode_t err;

	err = ext2fs_new_inode(fs, parent, LINUX_S_IFREG | 0600, NULL, &newino);
	if (err)
		return err;
	err = link_growing(fs, parent, name, newino, EXT2_FT_REG_FILE);
	if (err)
		return err;
	ext2fs_inode_alloc_stats2(fs, newino, +1, 0);
	memset(&inode, 0, sizeof(inode));
	inode.i_mode = LINUX_S_IFREG | 0600;
	inode.i_links_count = 1;
	inode.i_atime = inode.i_ctime = inode.i_mtime = (uint32_t)fs->now;
	if (ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t handle;

		err = ext2fs_extent_open2(fs, newino, EXT2_INODE(&inode), &handle);
		if (err)
			return err;
		ext2fs_extent_free(handle);
	}
	err = ext2fs_write_new_inode(fs, newino, EXT2_INODE(&inode));
	if (err)
		return err;
	*ino = newino;
	return 0;
}

long pi_file_open(ext2_filsys fs, uint32_t ino, int write, ext2_file_t *out)
{
	return ext2fs_file_open(fs, ino, write ? EXT2_FILE_WRITE : 0, out);
}

long pi_file_write(ext2_file_t file, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		unsigned int chunk = len > (1u << 30) ? (1u << 30) : (unsigned int)len;
		unsigned int done = 0;
		errcode_t err = ext2fs_file_write(file, p, chunk, &done);

		if (err)
			return err;
		if (done == 0)
			return EIO;
		p += done;
		len -= done;
	}
	return 0;
}

long pi_file_read(ext2_file_t file, void *buf, size_t len, size_t *got)
{
	unsigned int chunk = len > (1u << 30) ? (1u << 30) : (unsigned int)len;
	unsigned int done = 0;
	errcode_t err = ext2fs_file_read(file, buf, chunk, &done);

	*got = done;
	return err;
}

long pi_file_close(ext2_file_t file)
{
	return ext2fs_file_close(file);
}

/* Removes one name; when it was the last link, frees the blocks, the xattr block and the
 * inode as the kernel would. Directories are refused by the caller. */
long pi_unlink(ext2_filsys fs, uint32_t parent, const char *name, uint32_t ino)
{
	struct ext2_inode_large inode;
	errcode_t err;
	blk64_t acl;

	err = read_large(fs, ino, &inode);
	if (err)
		return err;
	err = ext2fs_unlink(fs, parent, name, ino, 0);
	if (err)
		return err;
	if (inode.i_links_count > 1) {
		inode.i_links_count--;
		return write_large(fs, ino, &inode);
	}
	if (ext2fs_inode_has_valid_blocks2(fs, EXT2_INODE(&inode))) {
		err = ext2fs_punch(fs, ino, EXT2_INODE(&inode), NULL, 0, ~0ULL);
		if (err)
			return err;
		/* ext2fs_punch rewrote the inode; pick up its new block count. */
		err = read_large(fs, ino, &inode);
		if (err)
			return err;
	}
	acl = ext2fs_file_acl_block(fs, EXT2_INODE(&inode));
	if (acl) {
		__u32 refs = 0;

		err = ext2fs_adjust_ea_refcount3(fs, acl, NULL, -1, &refs, ino);
		if (err)
			return err;
		if (refs == 0)
			ext2fs_block_alloc_stats2(fs, acl, -1);
		ext2fs_file_acl_block_set(fs, EXT2_INODE(&inode), 0);
	}
	inode.i_links_count = 0;
	inode.i_size = 0;
	inode.i_size_high = 0;
	inode.i_dtime = (uint32_t)fs->now;
	err = write_large(fs, ino, &inode);
	if (err)
		return err;
	ext2fs_inode_alloc_stats2(fs, ino, -1, 0);
	return 0;
}

/* Called once per directory entry (not "." or ".."): name, its length, and the file type
 * (an EXT2_FT_* value). */
typedef void (*pi_dirent_fn)(void *ctx, const char *name, size_t len, int ftype);

struct list_ctx {
	ext2_filsys fs;
	pi_dirent_fn fn;
	void *ctx;
	errcode_t err;
};

static int list_cb(struct ext2_dir_entry *de, int offset, int blocksize, char *buf, void *priv)
{
	struct list_ctx *lc = priv;
	int len = ext2fs_dirent_name_len(de);
	int ftype = ext2fs_dirent_file_type(de);

	(void)offset;
	(void)blocksize;
	(void)buf;
	if ((len == 1 && de->name[0] == '.') || (len == 2 && de->name[0] == '.' && de->name[1] == '.'))
		return 0;
	if (ftype == EXT2_FT_UNKNOWN) {
		/* Without the filetype feature the type lives only in the inode. */
		struct ext2_inode inode;

		lc->err = ext2fs_read_inode(lc->fs, de->inode, &inode);
		if (lc->err)
			return DIRENT_ABORT;
		ftype = LINUX_S_ISDIR(inode.i_mode) ? EXT2_FT_DIR
			: LINUX_S_ISREG(inode.i_mode) ? EXT2_FT_REG_FILE
			: LINUX_S_ISLNK(inode.i_mode) ? EXT2_FT_SYMLINK
			: EXT2_FT_UNKNOWN;
	}
	lc->fn(lc->ctx, de->name, (size_t)len, ftype);
	return 0;
}

long pi_list_dir(ext2_filsys fs, uint32_t dir, pi_dirent_fn fn, void *ctx)
{
	struct list_ctx lc = { fs, fn, ctx, 0 };
	errcode_t err = ext2fs_dir_iterate(fs, dir, 0, NULL, list_cb, &lc);

	return err ? err : lc.err;
}

/* "No such file" in the sense of a lookup: the name or one of its parents is missing. */
int pi_is_not_found(long code)
{
	return code == EXT2_ET_FILE_NOT_FOUND || code == EXT2_ET_NO_DIRECTORY;
}

typedef void (*pi_run_fn)(void *ctx, uint64_t first, uint64_t count);

/*
 * Calls fn once per run of blocks marked in use in the block bitmaps, in ascending order.
 * ext2fs_read_block_bitmap also marks the metadata of BLOCK_UNINIT groups (superblock backups,
 * descriptors, bitmaps, inode tables), so every block e2fsck reads is reported.
 */
long pi_used_block_runs(ext2_filsys fs, pi_run_fn fn, void *ctx)
{
	blk64_t start = fs->super->s_first_data_block;
	blk64_t end = ext2fs_blocks_count(fs->super) - 1;
	errcode_t err;

	if (!fs->block_map) {
		err = ext2fs_read_block_bitmap(fs);
		if (err)
			return err;
	}
	while (start <= end) {
		blk64_t first, stop;

		err = ext2fs_find_first_set_block_bitmap2(fs->block_map, start, end, &first);
		if (err == ENOENT)
			break;
		if (err)
			return err;
		err = ext2fs_find_first_zero_block_bitmap2(fs->block_map, first, end, &stop);
		if (err == ENOENT)
			stop = end + 1;
		else if (err)
			return err;
		fn(ctx, first, stop - first);
		start = stop;
	}
	return 0;
}
