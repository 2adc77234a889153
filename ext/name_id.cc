#include "name_id.h"

#include "pg_headers.h"

#include "common/cryptohash.h"
#include "common/sha2.h"

void atx_name_id(const char* namespace_label, const uint8* name, size_t len, uint8 out[16])
{
    // pg_cryptohash registers its context with the current resource owner (see atx_hmac_sha256).
    ResourceOwner saved = CurrentResourceOwner;
    static ResourceOwner own_owner = NULL;
    uint8 digest[PG_SHA256_DIGEST_LENGTH];
    pg_cryptohash_ctx* ctx;
    bool ok;

    if (saved == NULL) {
        if (own_owner == NULL)
            own_owner = ResourceOwnerCreate(NULL, "pg_atx name id");
        CurrentResourceOwner = own_owner;
    }
    ctx = pg_cryptohash_create(PG_SHA256);
    ok = ctx != NULL && pg_cryptohash_init(ctx) == 0 &&
         pg_cryptohash_update(ctx, (const uint8*)namespace_label, strlen(namespace_label)) == 0 &&
         pg_cryptohash_update(ctx, name, len) == 0 && pg_cryptohash_final(ctx, digest, sizeof digest) == 0;
    if (ctx != NULL)
        pg_cryptohash_free(ctx);
    CurrentResourceOwner = saved;
    if (!ok)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not compute a message id")));
    memcpy(out, digest, 16);
    out[6] = (out[6] & 0x0f) | 0x50;  // UUID version 5 (name-based, SHA)
    out[8] = (out[8] & 0x3f) | 0x80;  // RFC 4122 variant
}
