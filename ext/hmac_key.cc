// The per-cluster HMAC key: $PGDATA/pg_atx.key, 32 random bytes, mode 0600.
//
// Never a GUC: members of pg_read_all_settings can read even superuser-only
// GUCs. Created by CREATE EXTENSION (atx._ensure_key) when missing, by whichever
// backend gets there first: each writes a private temp file, fsyncs it, and
// link()s it into place; link() fails with EEXIST for all but one, and everybody
// then reads the winner's file. Never created anywhere else.
#include "hmac_key.h"

extern "C" {
#include "commands/extension.h"
}

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(USE_OPENSSL) && defined(ATX_HAVE_OPENSSL3)
#include <openssl/core_names.h>
#include <openssl/evp.h>
#define ATX_KEYED_MAC_CONTEXT 1
#endif

char* atx_key_file = NULL;
static bool key_loaded = false;
static uint8 key_bytes[ATX_KEY_LEN];

// Reads the key file; false if it does not exist.
static bool read_key_file(const char* path)
{
    int fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
    struct stat st;
    ssize_t n;

    if (fd < 0) {
        if (errno == ENOENT)
            return false;
        ereport(ERROR, (errcode_for_file_access(), errmsg("could not open file \"%s\": %m", path)));
    }
    if (fstat(fd, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        ereport(WARNING, (errmsg("pg_atx key file \"%s\" is accessible by group or others", path),
                          errhint("chmod 0600 \"%s\"", path)));
    n = read(fd, key_bytes, ATX_KEY_LEN + 0);
    if (n != ATX_KEY_LEN) {
        int save_errno = errno;
        CloseTransientFile(fd);
        errno = save_errno;
        ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED),
                        errmsg("pg_atx key file \"%s\" is not %d bytes long", path, ATX_KEY_LEN)));
    }
    // A longer file is corrupt as well.
    {
        char extra;
        if (read(fd, &extra, 1) != 0) {
            CloseTransientFile(fd);
            ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED),
                            errmsg("pg_atx key file \"%s\" is not %d bytes long", path, ATX_KEY_LEN)));
        }
    }
    CloseTransientFile(fd);
    return true;
}

static void create_key_file(const char* path)
{
    uint8 fresh[ATX_KEY_LEN];
    char* tmp = psprintf("%s.tmp.%d", path, MyProcPid);
    int fd;

    if (!pg_strong_random(fresh, sizeof fresh))
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not generate a random pg_atx key")));

    (void)unlink(tmp);  // left over by a crashed backend with the same pid
    fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, S_IRUSR | S_IWUSR);
    if (fd < 0)
        ereport(ERROR, (errcode_for_file_access(), errmsg("could not create file \"%s\": %m", tmp)));
    errno = 0;
    if (write(fd, fresh, sizeof fresh) != (ssize_t)sizeof fresh) {
        if (errno == 0)
            errno = ENOSPC;
        int save_errno = errno;
        CloseTransientFile(fd);
        unlink(tmp);
        errno = save_errno;
        ereport(ERROR, (errcode_for_file_access(), errmsg("could not write file \"%s\": %m", tmp)));
    }
    if (pg_fsync(fd) != 0) {
        int save_errno = errno;
        CloseTransientFile(fd);
        unlink(tmp);
        errno = save_errno;
        ereport(ERROR, (errcode_for_file_access(), errmsg("could not fsync file \"%s\": %m", tmp)));
    }
    CloseTransientFile(fd);
    explicit_bzero(fresh, sizeof fresh);

    if (link(tmp, path) != 0 && errno != EEXIST) {
        int save_errno = errno;
        unlink(tmp);
        errno = save_errno;
        ereport(ERROR, (errcode_for_file_access(), errmsg("could not link \"%s\" to \"%s\": %m", tmp, path)));
    }
    unlink(tmp);
    // Make the new directory entry durable.
    {
        char* dir = pstrdup(path);
        char* slash = strrchr(dir, '/');
        if (slash != NULL && slash != dir)
            *slash = '\0';
        fsync_fname(slash != NULL ? dir : DataDir, true);
    }
    pfree(tmp);
}

const uint8* atx_hmac_key(void)
{
    if (!key_loaded) {
        char* path =
            (atx_key_file && atx_key_file[0]) ? pstrdup(atx_key_file) : psprintf("%s/%s", DataDir, ATX_KEY_FILE);
        if (!read_key_file(path)) {
            // Only CREATE EXTENSION makes a key. A backend that finds none elsewhere must not
            // make its own: its messages would not authenticate anywhere else (a standby set up
            // without the key, or atx.key_file lost to a session's connection option).
            if (!creating_extension)
                ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                                errmsg("pg_atx key file \"%s\" does not exist", path),
                                errdetail("CREATE EXTENSION pg_atx creates it; every server that writes or applies "
                                          "messages needs the same key."),
                                errhint("Copy the primary's key file here (mode 0600), or, if atx.key_file names "
                                        "another file, check that this session sees that setting (preload pg_atx with "
                                        "shared_preload_libraries).")));
            create_key_file(path);
            if (!read_key_file(path))
                ereport(ERROR, (errcode_for_file_access(), errmsg("could not read file \"%s\": %m", path)));
        }
        pfree(path);
        key_loaded = true;
    }
    return key_bytes;
}

#ifdef ATX_KEYED_MAC_CONTEXT
// One HMAC context per process, keyed once: re-initialising it with the key it holds only copies
// the prepared inner and outer digests. pg_hmac builds, keys and frees a context per call, which
// (with the algorithm fetched from OpenSSL's provider each time) cost a row trigger's atx_log a
// tenth of its time. False: OpenSSL refused; the caller falls back to pg_hmac, which says why.
static bool keyed_hmac(const uint8* key, const char* data, size_t len, uint8 out[32])
{
    static EVP_MAC_CTX* ctx = NULL;
    static int ctx_pid = 0;  // the process it was made in (pg_atx may load in the postmaster)
    size_t out_len = 0;

    if (ctx == NULL || ctx_pid != MyProcPid) {
        EVP_MAC* mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        EVP_MAC_CTX* fresh = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
        OSSL_PARAM params[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char*)"SHA256", 0),
                                OSSL_PARAM_construct_end()};
        EVP_MAC_free(mac);  // the context holds its own reference
        if (fresh == NULL || EVP_MAC_init(fresh, key, ATX_KEY_LEN, params) != 1) {
            EVP_MAC_CTX_free(fresh);
            return false;
        }
        ctx = fresh;  // a context inherited from the postmaster is left alone, not freed
        ctx_pid = MyProcPid;
    } else if (EVP_MAC_init(ctx, NULL, 0, NULL) != 1) {
        return false;
    }
    return EVP_MAC_update(ctx, (const unsigned char*)data, len) == 1 && EVP_MAC_final(ctx, out, &out_len, 32) == 1 &&
           out_len == 32;
}
#endif

void atx_hmac_sha256(const char* data, size_t len, uint8 out[32])
{
#ifdef ATX_KEYED_MAC_CONTEXT
    if (keyed_hmac(atx_hmac_key(), data, len, out))
        return;
#endif
    // pg_hmac registers its OpenSSL context with the current resource owner, and a walsender
    // decodes outside any transaction, where there is none: then a long-lived one of our own.
    static ResourceOwner own_owner = NULL;
    ResourceOwner saved = CurrentResourceOwner;
    const uint8* key = atx_hmac_key();
    const char* why = NULL;
    pg_hmac_ctx* ctx;

    if (saved == NULL) {
        if (own_owner == NULL)
            own_owner = ResourceOwnerCreate(NULL, "pg_atx hmac");
        CurrentResourceOwner = own_owner;
    }
    ctx = pg_hmac_create(PG_SHA256);
    if (ctx == NULL) {
        CurrentResourceOwner = saved;
        ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
    }
    if (pg_hmac_init(ctx, key, ATX_KEY_LEN) < 0 || pg_hmac_update(ctx, (const uint8*)data, len) < 0 ||
        pg_hmac_final(ctx, out, 32) < 0)
        why = pstrdup(pg_hmac_error(ctx));
    pg_hmac_free(ctx);
    CurrentResourceOwner = saved;
    if (why != NULL)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not compute HMAC-SHA256: %s", why)));
}

static Datum ensure_key_body(FunctionCallInfo fcinfo)
{
    (void)atx_hmac_key();
    PG_RETURN_VOID();
}

bool atx_mac_equal(const uint8* a, const uint8* b)
{
    // No early exit: the time taken does not depend on where the MACs differ.
    volatile uint8 diff = 0;
    for (int i = 0; i < 32; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

#include "pg_guard.h"
ATX_ENTRY(atx_ensure_key, ensure_key_body)
